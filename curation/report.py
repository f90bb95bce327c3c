"""A self-contained HTML report of a built dataset (``curate report``): ``DATASET/report/index.html``.

Counts, reject reasons with examples, the bucket histogram, caption and T5-token statistics, and a
grid of sample thumbnails embedded as base64 JPEG. No template engine: strings + ``html.escape``.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from PIL import Image

from curation.io.layout import (
    IMAGE_EXTS,
    MANIFEST,
    REPORT_DIR,
    SHARDS_DIR,
    atomic_write,
    filesystem,
    iter_tar_samples,
    read_index,
    read_json,
    read_rejects,
)
from curation.records import REJECTED

MAX_THUMBNAILS = 24
THUMBNAIL_SIDE = 256
EXAMPLES_PER_REASON = 3

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; }
.bar { background: #4a7bd0; height: 0.8rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }
.grid figure { margin: 0; }
.grid figcaption { font-size: 0.8rem; max-height: 8rem; overflow: auto; overflow-wrap: anywhere; }
small { color: #666; }
"""


class Markup(str):
    """HTML this module built itself; never passed through ``escape`` again."""


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """Cells are escaped unless wrapped in ``Markup``."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    css = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
    return f"<td{css}>{escape(str(value))}</td>"


# ---------------------------------------------------------------- sections


def _counts_section(manifest: dict[str, Any] | None) -> str:
    if manifest is None:
        return f"<p><b>{MANIFEST} is missing: the build did not finish.</b></p>"
    counts = manifest.get("counts", {})
    total = counts.get("input") or 0
    rows = [(name, n, f"{100 * n / total:.1f}%" if total else "") for name, n in counts.items()]
    facts = [(name, manifest[name]) for name in ("fingerprint", "started_at", "finished_at") if name in manifest]
    return "<h2>Counts</h2>" + _table(("", "samples", "share"), rows) + _table(("run", ""), facts)


def _final_rejects(rejects: list[dict[str, Any]], written: set[str]) -> list[dict[str, Any]]:
    """One record per key never written; a rejection wins over a failure (as in the manifest counts)."""
    by_key: dict[str, dict[str, Any]] = {}
    for record in rejects:
        kept = by_key.get(record["key"])
        if record["key"] not in written and (kept is None or kept["status"] != REJECTED):
            by_key[record["key"]] = record
    return list(by_key.values())


def _rejects_section(rejects: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in rejects:
        groups.setdefault((record["status"], record["stage"] or "", record["reason"] or ""), []).append(record)
    rows = []
    for (status, stage, reason), records in sorted(groups.items(), key=lambda item: -len(item[1])):
        examples = "<br>".join(
            f"<b>{escape(r['key'])}</b> <small>{escape(r['source'] or '')}</small><br>{escape(r['detail'] or '')}"
            for r in records[:EXAMPLES_PER_REASON]
        )
        rows.append((status, stage, reason, len(records), Markup(examples)))
    if not rows:
        return "<h2>Rejects</h2><p>None.</p>"
    return "<h2>Rejects</h2>" + _table(("status", "stage", "reason", "samples", "examples"), rows)


def _buckets_section(buckets: dict[str, int]) -> str:
    largest = max(buckets.values(), default=0)
    rows = [
        (bucket, n, Markup(f'<div class="bar" style="width:{300 * n // largest}px"></div>'))
        for bucket, n in buckets.items()
    ]
    return "<h2>Aspect-ratio buckets</h2>" + _table(("bucket (h/w)", "samples", ""), rows)


def _stats_row(name: str, values: list[float]) -> tuple[Any, ...]:
    if not values:
        return (name, "", "", "", "")
    return (name, min(values), round(statistics.median(values), 1), round(statistics.fmean(values), 1), max(values))


def _captions_section(index: dict[str, list]) -> str:
    captions = [c or "" for c in index["caption"]]
    rows = [
        _stats_row("caption characters", [len(c) for c in captions]),
        _stats_row("caption words", [len(c.split()) for c in captions]),
        _stats_row("T5 tokens", [n for n in index["t5_tokens"] if n is not None]),
    ]
    truncated = sum(1 for flag in index["t5_truncated"] if flag)
    return (
        "<h2>Captions</h2>"
        + _table(("", "min", "median", "mean", "max"), rows)
        + f"<p>Captions truncated to the T5 length: <b>{truncated}</b> of {len(captions)}.</p>"
    )


# ---------------------------------------------------------------- thumbnails


def _thumbnail_data_uri(image_bytes: bytes) -> str:
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced scale
        small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample_figure(key: str, members: dict[str, bytes]) -> str | None:
    image_ext = next((ext for ext in IMAGE_EXTS if ext in members), None)
    if image_ext is None:
        return None
    try:
        uri = _thumbnail_data_uri(members[image_ext])
    except Exception:  # a broken image is verify's business; the report just skips it
        return None
    meta = json.loads(members.get("json", b"{}"))
    caption = members.get("txt", b"").decode("utf-8", "replace")
    label = f"{key} · {meta.get('width')}x{meta.get('height')} · bucket {meta.get('bucket')}"
    return (
        f'<figure><img src="{uri}" alt="{escape(key)}">'
        f"<figcaption><b>{escape(label)}</b><br>{escape(caption)}</figcaption></figure>"
    )


def _thumbnails_section(fs: AbstractFileSystem, root: str, shards: list[str]) -> str:
    figures: list[str] = []
    for shard in shards:
        with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file:
            for key, members in iter_tar_samples(file, (*IMAGE_EXTS, "json", "txt")):
                figure = _sample_figure(key, members)
                if figure:
                    figures.append(figure)
                if len(figures) == MAX_THUMBNAILS:
                    break
        if len(figures) == MAX_THUMBNAILS:
            break
    return f'<h2>Samples ({len(figures)})</h2><div class="grid">{"".join(figures)}</div>'


# ---------------------------------------------------------------- page


def render_report(path: str) -> str:
    """The report page for the dataset at ``path``."""
    fs, root = filesystem(path)
    manifest = read_json(fs, f"{root}/{MANIFEST}")
    index = read_index(path, ["key", "shard", "bucket", "caption", "t5_tokens", "t5_truncated"]).to_pydict()
    rejects = _final_rejects(read_rejects(path).to_pylist(), set(index["key"]))
    buckets = (manifest or {}).get("buckets") or {b: index["bucket"].count(b) for b in sorted(set(index["bucket"]))}
    shards = sorted(set(index["shard"]))
    sections = [
        _counts_section(manifest),
        _rejects_section(rejects),
        _buckets_section(buckets),
        _captions_section(index),
        _thumbnails_section(fs, root, shards),
    ]
    title = f"Dataset report: {root}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{''.join(sections)}</body></html>"
    )


def write_report(path: str) -> Path:
    """Write ``path/report/index.html`` and return where it is."""
    fs, root = filesystem(path)
    page = render_report(path).encode("utf-8")
    target = f"{root}/{REPORT_DIR}/index.html"
    atomic_write(fs, target, lambda file: file.write(page))
    return Path(target)
