"""Inline SVG charts for the report: horizontal bars and histograms with marker lines. No JavaScript, no CDN."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

BAR_COLOR = "#4a7bd0"
MARK_COLOR = "#d04a4a"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` on a histogram (a limit such as the T5 length or a score threshold)."""

    x: float
    label: str


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"


def bar_chart(labels: Sequence[str], values: Sequence[float], width: int = 560, unit: str = "") -> str:
    """Horizontal bars, one per label, each with its value written after it."""
    if not values:
        return ""
    row, label_width, value_width = 18, 170, 90
    largest = max(max(values), 1e-12)
    span = width - label_width - value_width
    parts = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = i * row
        bar = max(span * value / largest, 1 if value else 0)
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{escape(str(label))}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{bar:.1f}" height="{row - 6}" fill="{BAR_COLOR}"/>'
            f'<text x="{label_width + bar + 4:.1f}" y="{y + 13}">{_number(value)}{escape(unit)}</text>'
        )
    height = row * len(values)
    return f'<svg class="chart" width="{width}" height="{height}" {FONT} role="img">{"".join(parts)}</svg>'


def bins_for(values: Sequence[float], count: int = 20) -> list[float]:
    """Bin edges over ``values``: whole-number widths when the values are whole numbers."""
    low, high = min(values), max(values)
    whole = all(float(v).is_integer() for v in values)
    if whole:
        step = max(1, math.ceil((high - low + 1) / count))
        return [low + i * step for i in range(math.ceil((high - low + 1) / step) + 1)]
    if high == low:
        return [low - 0.5, low + 0.5]
    step = (high - low) / count
    return [low + i * step for i in range(count)] + [high]


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin ``[edge_i, edge_i+1)``, the last bin closed."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        counts[min(max(bisect.bisect_right(edges, value) - 1, 0), len(counts) - 1)] += 1
    return counts


def histogram(values: Sequence[float], markers: Sequence[Marker] = (), width: int = 560, height: int = 160) -> str:
    """A histogram of ``values`` with optional vertical markers (drawn even when outside the data's range)."""
    if not values:
        return ""
    edges = bins_for(values)
    low, high = min([edges[0], *(m.x for m in markers)]), max([edges[-1], *(m.x for m in markers)])
    if high == low:
        high = low + 1
    counts = bin_counts(values, edges)
    left, bottom, top, right = 40, 28, 14, 16
    plot_w, plot_h = width - left - right, height - bottom - top
    largest = max(counts) or 1

    def x_of(value: float) -> float:
        return left + plot_w * (value - low) / (high - low)

    parts = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>']
    for count, start, end in zip(counts, edges, edges[1:], strict=False):
        bar_h = plot_h * count / largest
        x0, x1 = x_of(start), x_of(end)
        parts.append(
            f'<rect x="{x0:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{bar_h:.1f}" fill="{BAR_COLOR}"><title>{_number(start)}–{_number(end)}: {count}</title></rect>'
        )
    for value in (low, high):
        anchor = "start" if value == low else "end"
        parts.append(f'<text x="{x_of(value):.1f}" y="{height - 10}" text-anchor="{anchor}">{_number(value)}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 9}" text-anchor="end">{largest}</text>')
    for marker in markers:
        x = x_of(marker.x)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{MARK_COLOR}" '
            f'stroke-dasharray="4 2"/><text x="{x - 3:.1f}" y="{top + 6}" text-anchor="end" '
            f'fill="{MARK_COLOR}">{escape(marker.label)}</text>'
        )
    return f'<svg class="chart" width="{width}" height="{height}" {FONT} role="img">{"".join(parts)}</svg>'
