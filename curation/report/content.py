"""Report sections about the written samples: buckets, captions, caption flags, scores, the gallery."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import Any

from curation.config import PRIMARY_CAPTION, SCORE_NAMES
from curation.report.data import ReportData, Sample
from curation.report.html import Markup, section, table, text, thumbnail_tag
from curation.report.svg import Marker, bar_chart, histogram

GALLERY_SIDE = 256  # longest side of a gallery thumbnail
FLAVOR_LENGTHS = (Marker(120, "α 120"), Marker(300, "Σ 300"))


def _bucket_order(bucket: str) -> tuple[float, str]:
    try:
        return float(bucket), bucket
    except ValueError:
        return float("inf"), bucket


def buckets_section(data: ReportData) -> Markup:
    buckets = (data.manifest or {}).get("buckets") or Counter(b for b in data.index["bucket"] if b)
    if not buckets:
        return section("buckets", "Aspect-ratio buckets")
    names = sorted(buckets, key=_bucket_order)
    chart = bar_chart([f"{name} (h/w)" for name in names], [buckets[name] for name in names])
    return section("buckets", "Aspect-ratio buckets", f"<p>{len(names)} bucket(s) in use.</p>", chart)


# ---------------------------------------------------------------- captions


def stats_row(name: str, values: Sequence[float]) -> tuple[Any, ...]:
    if not values:
        return (name, 0, "", "", "", "")
    return (
        name,
        len(values),
        min(values),
        round(statistics.median(values), 1),
        round(statistics.fmean(values), 1),
        max(values),
    )


def caption_names(data: ReportData) -> list[str]:
    """The dataset's caption names: the recipe's jobs, then any other the samples hold (``alt``), primary first."""
    names = list(((data.config.get("caption") or {}).get("jobs") or {}).keys())
    for sample in data.samples:
        names += [name for name in sample.meta.get("captions") or {} if name not in names]
    if data.index["key"] and PRIMARY_CAPTION not in names:
        names.insert(0, PRIMARY_CAPTION)
    return sorted(dict.fromkeys(names), key=lambda name: name != PRIMARY_CAPTION)


def caption_values(data: ReportData, name: str) -> tuple[list[int], list[int], int, str]:
    """Words and T5 tokens per sample of caption ``name``, how many were truncated, and where they come from."""
    if name == PRIMARY_CAPTION:
        words = [n for n in data.index["caption_words"] if n is not None]
        tokens = [n for n in data.index["t5_tokens"] if n is not None]
        truncated = sum(1 for flag in data.index["t5_truncated"] if flag)
        return words, tokens, truncated, f"all {len(words)} samples (index)"
    metas = [sample.meta for sample in data.samples]
    words = [len(m["captions"][name].split()) for m in metas if isinstance((m.get("captions") or {}).get(name), str)]
    tokens = [m["caption_t5_tokens"][name] for m in metas if name in (m.get("caption_t5_tokens") or {})]
    truncated = sum(1 for m in metas if (m.get("caption_t5_truncated") or {}).get(name))
    return words, tokens, truncated, f"{len(metas)} samples read from the shards"


def _length_markers(data: ReportData) -> list[Marker]:
    length = (data.config.get("t5") or {}).get("max_length")
    return [Marker(length, f"T5 max {length}")] if length else list(FLAVOR_LENGTHS)


def captions_section(data: ReportData) -> Markup:
    names = caption_names(data)
    if not names:
        return section("captions", "Captions")
    parts = []
    for name in names:
        words, tokens, truncated, source = caption_values(data, name)
        if not words and not tokens:
            parts.append(f"<h3>{escape(name)}</h3><p class='nodata'>no data</p>")
            continue
        charts = [
            f"<div><b>words</b>{histogram(words)}</div>" if words else "",
            f"<div><b>T5 tokens</b>{histogram(tokens, _length_markers(data))}</div>" if tokens else "",
        ]
        stats = table(
            ("", "samples", "min", "median", "mean", "max"),
            [stats_row("words", words), stats_row("T5 tokens", tokens)],
        )
        encoded = f"Truncated to the T5 length: <b>{truncated}</b> of {len(tokens)}." if tokens else "Not T5-encoded."
        note = f"<p>{encoded} <small>From {source}.</small></p>"
        parts.append(f"<h3>{escape(name)}</h3>{stats}{note}<div class='charts'>{''.join(charts)}</div>")
    return section("captions", "Captions", *parts)


def flag_counts(data: ReportData) -> dict[str, dict[str, int]]:
    """{caption name: {flag: samples}}: the manifest's, else counted from the index."""
    if data.manifest and data.manifest.get("caption_flags") is not None:
        return data.manifest["caption_flags"]
    import json

    counts: dict[str, Counter] = {}
    for value in data.index["caption_flags"]:
        for name, flags in (json.loads(value) if value else {}).items():
            counts.setdefault(name, Counter()).update(flags or ["none"])
    return {name: dict(sorted(c.items())) for name, c in counts.items()}


def flags_section(data: ReportData) -> Markup:
    flags = flag_counts(data)
    written = len(data.index["key"])
    parts = []
    for name, counts in flags.items():
        rows = [(flag, n, f"{100 * n / written:.1f}%" if written else "") for flag, n in counts.items()]
        chart = bar_chart(list(counts), list(counts.values()))
        flag_table = table(("flag", "samples", "share"), rows)
        parts.append(f"<h3>{escape(name)}</h3><div class='charts'>{flag_table}{chart}</div>")
    return section("flags", "Caption quality flags", *parts)


# ---------------------------------------------------------------- scores


def score_values(data: ReportData, name: str) -> tuple[list[float], str]:
    column = data.index.get(f"score_{name}")
    if column is not None:
        return [v for v in column if v is not None], "index"
    values = [s.meta["scores"][name] for s in data.samples if name in (s.meta.get("scores") or {})]
    return values, f"{len(data.samples)} samples read from the shards"


def _score_markers(data: ReportData, name: str) -> list[Marker]:
    rule = (data.config.get("scorers") or {}).get(name) or {}
    return [Marker(rule[bound], f"{bound} {rule[bound]:g}") for bound in ("min", "max") if rule.get(bound) is not None]


def scores_section(data: ReportData) -> Markup:
    parts = []
    for name in SCORE_NAMES:
        values, source = score_values(data, name)
        if values:
            stats = table(("", "samples", "min", "median", "mean", "max"), [stats_row(name, values)])
            note = f"<small>From the {source}.</small>"
            parts.append(f"<h3>{name}</h3>{stats}{histogram(values, _score_markers(data, name))}{note}")
    return section("scores", "Scores", *parts)


# ---------------------------------------------------------------- gallery


def _figure(sample: Sample) -> str:
    meta = sample.meta
    label = f"{sample.key} · {meta.get('width')}x{meta.get('height')} · bucket {meta.get('bucket')}"
    lines = [f"<b>{escape(label)}</b>"]
    flags = meta.get("caption_flags") or {}
    for name, caption in (meta.get("captions") or {}).items():
        flagged = f" <small>[{escape(', '.join(flags[name]))}]</small>" if flags.get(name) else ""
        lines.append(f"<i>{escape(name)}</i>{flagged}: {text(caption)}")
    scores = meta.get("scores") or {}
    if scores:
        lines.append("scores: " + escape(", ".join(f"{k} {v:.3g}" for k, v in scores.items())))
    picture = thumbnail_tag(sample.image, sample.key, GALLERY_SIDE)
    return f"<figure>{picture}<figcaption>{'<br>'.join(lines)}</figcaption></figure>"


def gallery_section(data: ReportData) -> Markup:
    if not data.gallery:
        return section("gallery", "Samples")
    figures = "".join(_figure(sample) for sample in data.gallery)
    note = f"<p>{len(data.gallery)} kept samples (thumbnails), from the start of up to 4 evenly spaced shards.</p>"
    return section("gallery", f"Samples ({len(data.gallery)})", note, f'<div class="grid">{figures}</div>')
