"""Per-stage statistics of one run: aggregation of per-call figures, derived rates, the terminal table.

Figures of one call (from ``pipelines/ray_stages.timed_batch``): ``rows_in`` (OK rows entering),
``rows_out`` {status: rows}, ``seconds`` (in ``process_batch``), ``convert_seconds`` (Arrow ↔ rows),
``started_at`` / ``ended_at`` (epoch seconds), ``worker``, and from model stages ``model_seconds``,
``model_calls``, ``model_flops``. An actor reports ``setup_seconds``, ``device`` and ``dtype`` once. The
write stage reports ``waited_seconds`` (waiting for upstream blocks), which its ``seconds`` exclude.

Derived per stage: ``active_seconds`` (first call start to last call end), ``rows_per_s`` (rows in over
that span: the rate the stage sustained in this run), ``rows_per_worker_s`` (rows in over busy seconds:
what one worker can do when it is never starved — the number to size pools with), ``busy`` (busy
seconds / (active span × workers): near 1 means the stage limits the run), and for model stages
``model_tflops_per_s`` and, on a GPU with a known peak, ``mfu``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

_SUMS = (
    "rows_in", "seconds", "convert_seconds", "model_seconds", "model_calls", "model_flops", "setup_seconds",
    "waited_seconds",
)  # fmt: skip


class StageStats:
    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, dict[str, int]] = {}

    def record(self, stage: str, figures: dict[str, Any]) -> None:
        entry = self.stages.setdefault(stage, {"rows_out": Counter(), "workers": set(), "calls": 0})
        for name in _SUMS:
            if name in figures:
                entry[name] = entry.get(name, 0) + figures[name]
        if "rows_out" in figures:
            entry["rows_out"].update(figures["rows_out"])
            entry["calls"] += 1
        if "worker" in figures:
            entry["workers"].add(figures["worker"])
        if "started_at" in figures:
            entry["first_start"] = min(entry.get("first_start", figures["started_at"]), figures["started_at"])
            entry["last_end"] = max(entry.get("last_end", figures["ended_at"]), figures["ended_at"])
        for name in ("device", "dtype"):
            if figures.get(name):
                entry[name] = figures[name]

    def record_inputs(self, unit_id: str, counts: dict[str, int]) -> None:
        """Idempotent per read unit: a retried read task replaces its unit's counts instead of adding."""
        self.inputs[unit_id] = dict(counts)

    def input_counts(self) -> dict[str, int]:
        total: Counter = Counter()
        for counts in self.inputs.values():
            total.update(counts)
        return dict(total)

    def snapshot(self) -> dict[str, Any]:
        return {
            "stages": {name: summarize(entry) for name, entry in self.stages.items()},
            "inputs": self.input_counts(),
        }


def summarize_idle() -> dict[str, Any]:
    """A stage that received no rows this run (e.g. a resume with nothing left to do)."""
    return summarize({"rows_out": Counter(), "workers": set(), "calls": 0})


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    rows_in = entry.get("rows_in", 0)
    busy_seconds = entry.get("seconds", 0.0)
    span = max(entry.get("last_end", 0.0) - entry.get("first_start", 0.0), 0.0)
    workers = len(entry["workers"])
    summary: dict[str, Any] = {
        "rows_in": rows_in,
        "rows_out": dict(sorted(entry["rows_out"].items())),
        "calls": entry["calls"],
        "workers": workers,
        "seconds": round(busy_seconds, 3),
        "convert_seconds": round(entry.get("convert_seconds", 0.0), 3),
        "active_seconds": round(span, 3),
        "rows_per_s": _rate(rows_in, span),
        "rows_per_worker_s": _rate(rows_in, busy_seconds),
        "busy": round(busy_seconds / (span * workers), 3) if span > 0 and workers else None,
    }
    for name in ("setup_seconds", "waited_seconds"):
        if name in entry:
            summary[name] = round(entry[name], 3)
    summary.update(_model_figures(entry))
    return summary


def _model_figures(entry: dict[str, Any]) -> dict[str, Any]:
    if not entry.get("model_calls"):
        return {}
    seconds = entry.get("model_seconds", 0.0)
    figures: dict[str, Any] = {
        "model_seconds": round(seconds, 3),
        "device": entry.get("device"),
        "dtype": entry.get("dtype"),
    }
    flops = entry.get("model_flops")
    if flops and seconds > 0:
        figures["model_tflops_per_s"] = round(flops / seconds / 1e12, 4)
        figures["mfu"] = _mfu(flops, seconds, entry.get("device"), entry.get("dtype"))
    return figures


def _mfu(flops: float, seconds: float, device: str | None, dtype: str | None) -> float | None:
    if not device or device.startswith("cpu"):
        return None
    try:
        from curation.models.flops import mfu
    except ImportError:
        return None
    value = mfu(flops, seconds, device, dtype)
    return None if value is None else round(value, 4)


def _rate(rows: int, seconds: float) -> float | None:
    return round(rows / seconds, 3) if seconds > 0 else None


STAGE_COLUMNS = (
    ("stage", 10),
    ("rows in", 8),
    ("ok", 7),
    ("rejected", 8),
    ("failed", 6),
    ("workers", 7),
    ("busy s", 8),
    ("rows/s", 8),
    ("rows/s/worker", 13),
    ("busy", 5),
    ("model s", 8),
    ("TFLOP/s", 8),
    ("MFU", 5),
)


def format_stage_table(stages: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the run's stages, in data-flow order (the order they were first seen)."""
    header = "  ".join(_cell(title, width, i) for i, (title, width) in enumerate(STAGE_COLUMNS))
    lines = [header, "-" * len(header)]
    for name, summary in stages.items():
        out = summary.get("rows_out", {})
        cells = [
            name,
            summary.get("rows_in", 0),
            out.get("ok", 0),
            out.get("rejected", 0),
            out.get("failed", 0),
            summary.get("workers", 0),
            summary.get("seconds"),
            summary.get("rows_per_s"),
            summary.get("rows_per_worker_s"),
            summary.get("busy"),
            summary.get("model_seconds"),
            summary.get("model_tflops_per_s"),
            summary.get("mfu"),
        ]
        columns = zip(cells, STAGE_COLUMNS, strict=True)
        lines.append("  ".join(_cell(value, width, i) for i, (value, (_, width)) in enumerate(columns)))
    return "\n".join(lines)


def _cell(value: Any, width: int, column: int) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = str(value)
    return text.ljust(width) if column == 0 else text.rjust(width)
