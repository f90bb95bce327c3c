"""Report sections about the run: summary, funnel (with thumbnails of rejects), duplicate groups, stage throughput."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from html import escape
from typing import Any

from curation.report.data import ReportData, kept_images, reject_thumbnails
from curation.report.html import NO_DATA, Markup, image_tag, section, table, text, thumbnail_tag
from curation.report.svg import bar_chart
from curation.thumbnails import NO_THUMBNAIL_REASONS, THUMBNAIL_SIDE

# Pipeline order of the stages that reject or fail inputs (as curation.io.writer.FUNNEL_ORDER).
FUNNEL_ORDER = ("read", "dedup", "filter", "scorers", "vae", "caption", "t5", "writer")
THUMBNAILS_PER_REASON = 8
EXAMPLES_PER_REASON = 3
MAX_DUPLICATE_GROUPS = 12
DUPLICATE_REASONS = ("duplicate", "near_duplicate")
COUNT_NAMES = ("input", "written", "rejected", "failed")


# ---------------------------------------------------------------- summary


def duration(manifest: dict[str, Any]) -> str:
    try:
        seconds = (
            datetime.fromisoformat(manifest["finished_at"]) - datetime.fromisoformat(manifest["started_at"])
        ).total_seconds()
    except (KeyError, TypeError, ValueError):
        return ""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def summary_section(data: ReportData) -> Markup:
    manifest = data.manifest
    if manifest is None:
        return section("summary", "Run summary", f"<p class='warn'>{MANIFEST_MISSING}</p>", _counts_table(data))
    facts = [
        ("fingerprint", manifest.get("fingerprint")),
        ("run", manifest.get("run_id")),
        ("flavor", manifest.get("flavor") or data.config.get("flavor")),
        ("caption cleaning", manifest.get("caption_cleaning")),
        ("started", manifest.get("started_at")),
        ("finished", manifest.get("finished_at")),
        ("duration", duration(manifest)),
        ("Ray", (manifest.get("ray") or {}).get("address")),
    ]
    parts = [_counts_table(data), table(("run", ""), [(name, value) for name, value in facts if value])]
    if manifest.get("unaccounted"):
        parts.append(f"<p class='warn'>{manifest['unaccounted']} input(s) not accounted for.</p>")
    parts += [_models_table(manifest.get("models") or {}), _inputs_table(manifest.get("inputs") or {})]
    versions = manifest.get("versions") or {}
    if versions:
        parts.append(f"<details><summary>package versions</summary>{table(('package', 'version'), versions.items())}")
        parts.append("</details>")
    return section("summary", "Run summary", *parts)


MANIFEST_MISSING = "manifest.json is missing: the build did not finish (what is below was read from the shards)."


def _counts_table(data: ReportData) -> Markup:
    counts = (data.manifest or {}).get("counts") or {
        "written": len(data.index["key"]),
        "rejected": sum(1 for r in data.rejects if r["status"] == "rejected"),
        "failed": sum(1 for r in data.rejects if r["status"] == "failed"),
    }
    total = counts.get("input") or sum(counts.values()) or 0
    rows = [(name, counts[name], f"{100 * counts[name] / total:.1f}%" if total else "") for name in COUNT_NAMES[1:]]
    return table(("", "samples", "share"), [("input", total, ""), *[r for r in rows if r[0] in counts]])


def _models_table(models: dict[str, dict[str, Any]]) -> str:
    if not models:
        return ""
    rows = []
    for role, record in models.items():
        record = record or {}
        version = record.get("revision") or ""
        if record.get("weights_sha256_sampled"):
            version = f"weights {record['weights_sha256_sampled']}" + (f", {version}" if version else "")
        folders = ", ".join(record.get("subfolders") or [])
        rows.append((role, record.get("path"), folders, version, record.get("device"), record.get("dtype")))
    return table(("model", "id or path", "subfolders", "revision / weights", "device", "dtype"), rows)


def _inputs_table(inputs: dict[str, Any]) -> str:
    if not inputs:
        return ""
    return table(("inputs", ""), [(name, value) for name, value in inputs.items()])


# ---------------------------------------------------------------- funnel


def funnel_counts(data: ReportData) -> dict[str, dict[str, int]]:
    """{stage: {reason: inputs}}: the manifest's funnel, else counted from the rejects."""
    if data.manifest and data.manifest.get("funnel") is not None:
        return data.manifest["funnel"]
    per_stage: dict[str, Counter] = {}
    for record in data.rejects:
        per_stage.setdefault(record["stage"] or "unknown", Counter())[record["reason"] or "unknown"] += 1
    order = {name: i for i, name in enumerate(FUNNEL_ORDER)}
    stages = sorted(per_stage, key=lambda stage: (order.get(stage, len(order)), stage))
    return {stage: dict(per_stage[stage].most_common()) for stage in stages}


def survivors(total: int, funnel: dict[str, dict[str, int]]) -> list[tuple[str, int]]:
    """Inputs left after each stage of the funnel, starting with all inputs."""
    left, steps = total, [("input", total)]
    for stage, reasons in funnel.items():
        left -= sum(reasons.values())
        steps.append((f"after {stage}", left))
    return steps


def funnel_section(data: ReportData) -> Markup:
    funnel = funnel_counts(data)
    total = ((data.manifest or {}).get("counts") or {}).get("input") or len(data.index["key"]) + len(data.rejects)
    if not total:
        return section("funnel", "Funnel")
    steps = survivors(total, funnel)
    parts = [bar_chart([name for name, _ in steps], [n for _, n in steps])]
    if not funnel:
        parts.append("<p>Every input was written.</p>")
        return section("funnel", "Funnel", *parts)
    examples = _reject_examples(data)
    shown = [r["key"] for records in examples.values() for r in records[:THUMBNAILS_PER_REASON]]
    thumbnails = reject_thumbnails(data, [k for k in shown if k])
    rows = []
    for stage, reasons in funnel.items():
        for reason, count in reasons.items():
            records = examples.get((stage, reason), [])
            rows.append((stage, reason, count, _thumbs(records, thumbnails, reason), _details(records)))
    parts.append(table(("stage", "reason", "inputs", "examples", "details"), rows))
    return section("funnel", "Funnel", *parts)


def _reject_examples(data: ReportData) -> dict[tuple[str, str], list[dict]]:
    examples: dict[tuple[str, str], list[dict]] = {}
    for record in data.rejects:
        group = examples.setdefault((record["stage"] or "unknown", record["reason"] or "unknown"), [])
        if len(group) < THUMBNAILS_PER_REASON:
            group.append(record)
    return examples


def _thumbs(records: list[dict], thumbnails: dict[str, bytes], reason: str) -> Markup:
    figures = []
    for record in records[:THUMBNAILS_PER_REASON]:
        if reason in NO_THUMBNAIL_REASONS:
            picture = image_tag(None, record["key"], placeholder=f"{reason}: not shown")
        else:
            picture = image_tag(thumbnails.get(record["key"]), record["key"])
        figures.append(f'<figure class="thumb">{picture}{escape(record["key"] or "")}</figure>')
    return Markup(f'<div class="thumbs">{"".join(figures)}</div>')


def _details(records: list[dict]) -> Markup:
    lines = [
        f"<b>{text(r['key'])}</b> <small>{text(r['source'])}</small><br>{text(r['detail'])}"
        for r in records[:EXAMPLES_PER_REASON]
    ]
    return Markup("<br>".join(lines))


# ---------------------------------------------------------------- duplicates


def duplicate_groups(rejects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{kept key: [dropped reject records]} of the dedup stage; the detail starts with the kept sample's key."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in rejects:
        if record["stage"] == "dedup" and record["reason"] in DUPLICATE_REASONS and record["detail"]:
            groups.setdefault(record["detail"].split()[0], []).append(record)
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


def duplicates_section(data: ReportData) -> Markup:
    groups = duplicate_groups(data.rejects)
    if not groups:
        dedup_ran = "dedup" in ((data.manifest or {}).get("stages") or {})
        note = "<p>No duplicates were removed.</p>" if dedup_ran else NO_DATA
        return section("duplicates", "Duplicate groups", note)
    shown = dict(list(groups.items())[:MAX_DUPLICATE_GROUPS])
    kept = kept_images(data, list(shown))
    dropped = reject_thumbnails(data, [r["key"] for records in shown.values() for r in records])
    removed = sum(len(records) for records in groups.values())
    rows = [f"<p>{removed} duplicate(s) removed in {len(groups)} group(s); the {len(shown)} largest:</p>"]
    for kept_key, records in shown.items():
        kept_label = f"kept: {kept_key}" + ("" if kept_key in kept else " (not opened or not written)")
        kept_picture = thumbnail_tag(kept.get(kept_key), kept_key, THUMBNAIL_SIDE, "kept")
        figures = [f'<figure class="thumb">{kept_picture}{escape(kept_label)}</figure>']
        for record in records[:THUMBNAILS_PER_REASON]:
            picture = image_tag(dropped.get(record["key"]), record["key"], "dropped")
            label = f"{record['reason']}: {record['key']} ({record['detail'].partition(' ')[2].strip('()')})"
            figures.append(f'<figure class="thumb">{picture}{escape(label)}</figure>')
        rows.append(f'<div class="dup">{"".join(figures)}</div>')
    return section("duplicates", "Duplicate groups", *rows)


# ---------------------------------------------------------------- stages


STAGE_FIELDS = (
    ("rows in", "rows_in"),
    ("workers", "workers"),
    ("busy s", "seconds"),
    ("rows/s", "rows_per_s"),
    ("rows/s/worker", "rows_per_worker_s"),
    ("busy", "busy"),
    ("setup s", "setup_seconds"),
    ("model s", "model_seconds"),
    ("TFLOP/s", "model_tflops_per_s"),
    ("MFU", "mfu"),
    ("device", "device"),
    ("dtype", "dtype"),
)


def stages_section(data: ReportData) -> Markup:
    stages = (data.manifest or {}).get("stages") or {}
    if not stages:
        return section("stages", "Stages: throughput and time")
    rows = []
    for name, figures in stages.items():
        out = figures.get("rows_out") or {}
        values = [figures.get(key) for _, key in STAGE_FIELDS]
        rows.append((name, *values[:1], out.get("ok", 0), out.get("rejected", 0), out.get("failed", 0), *values[1:]))
    headers = ("stage", "rows in", "ok", "rejected", "failed", *(title for title, _ in STAGE_FIELDS[1:]))
    rows = [tuple("" if value is None else value for value in row) for row in rows]
    names = list(stages)
    charts = [
        "<div><h3>busy seconds (all workers)</h3>"
        + bar_chart(names, [stages[n].get("seconds") or 0 for n in names], unit=" s")
        + "</div>",
        "<div><h3>rows per second per worker</h3>"
        + bar_chart(names, [stages[n].get("rows_per_worker_s") or 0 for n in names])
        + "</div>",
    ]
    chart_row = f'<div class="charts">{"".join(charts)}</div>'
    return section("stages", "Stages: throughput and time", table(headers, rows), chart_row)
