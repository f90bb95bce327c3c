"""``curate inspect DATASET [KEY]``: a dataset's summary, or one sample: metadata, every caption, the shapes and
dtypes of its features and where it lives (shard and member names).

A sample is found through the index (which names its shard); only that shard is opened, and read up to the
sample. A key that was never written is looked up in the rejects, so the answer says why.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Any

import pyarrow.compute as pc

from curation.io.layout import (
    INDEX_DIR,
    MANIFEST,
    REPORT_DIR,
    RUN_DIR,
    SHARDS_DIR,
    filesystem,
    load_npy,
    read_index,
    read_json,
    read_rejects,
)

DATASET_MARKERS = (MANIFEST, SHARDS_DIR, INDEX_DIR, RUN_DIR)
TOP_REASONS = 5


class InspectError(ValueError):
    """A key or dataset that cannot be shown; the message is one line."""


def check_dataset(path: str) -> None:
    """Raise ``FileNotFoundError`` (one line) unless ``path`` exists and holds a dataset, finished or not."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"{path} does not exist")
    if not any(fs.exists(f"{root}/{name}") for name in DATASET_MARKERS):
        raise FileNotFoundError(f"{path} is not a curated dataset (no {MANIFEST}, {SHARDS_DIR}/ or {INDEX_DIR}/)")


# ---------------------------------------------------------------- the dataset


def top(counts: dict[str, int], n: int = TOP_REASONS) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def dataset_summary(path: str) -> dict[str, Any]:
    check_dataset(path)
    fs, root = filesystem(path)
    manifest = read_json(fs, f"{root}/{MANIFEST}") or {}
    index = read_index(path, ["key", "shard"]).to_pydict()
    config = manifest.get("config") or {}
    summary: dict[str, Any] = {
        "dataset": path,
        "finished": bool(manifest),
        "fingerprint": manifest.get("fingerprint"),
        "flavor": manifest.get("flavor"),
        "counts": manifest.get("counts") or {"written": len(index["key"])},
        "reject_reasons": dict(top(manifest.get("reject_reasons") or {})),
        "failure_reasons": dict(top(manifest.get("failure_reasons") or {})),
        "duplicates_removed": sum(
            n for reason, n in ((manifest.get("funnel") or {}).get("dedup") or {}).items() if reason != "duplicate_key"
        ),
        "buckets": len(manifest.get("buckets") or {}),
        "captions": list(((config.get("caption") or {}).get("jobs") or {}).keys()),
        "t5_max_length": (config.get("t5") or {}).get("max_length"),
        "shards": len(set(index["shard"])),
        "models": {name: (record or {}).get("path") for name, record in (manifest.get("models") or {}).items()},
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
    }
    report = f"{root}/{REPORT_DIR}/index.html"
    summary["report"] = report if fs.exists(report) else None
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"dataset      {summary['dataset']}" + ("" if summary["finished"] else "  (unfinished: no manifest)")]
    if summary["fingerprint"]:
        lines.append(f"fingerprint  {summary['fingerprint']}  flavor {summary['flavor']}")
    lines.append("counts       " + "  ".join(f"{name} {n}" for name, n in summary["counts"].items()))
    if summary["reject_reasons"]:
        lines.append("rejected     " + ", ".join(f"{reason} {n}" for reason, n in summary["reject_reasons"].items()))
    if summary["failure_reasons"]:
        lines.append("failed       " + ", ".join(f"{reason} {n}" for reason, n in summary["failure_reasons"].items()))
    lines.append(f"duplicates   {summary['duplicates_removed']} removed")
    lines.append(f"captions     {', '.join(summary['captions']) or '-'}  (T5 max length {summary['t5_max_length']})")
    lines.append(f"shards       {summary['shards']}  buckets {summary['buckets']}")
    for name, model in summary["models"].items():
        lines.append(f"model        {name}: {model}")
    if summary["report"]:
        lines.append(f"report       {summary['report']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- one sample


def _not_written(path: str, key: str) -> InspectError:
    table = read_rejects(path, ["key", "stage", "reason", "detail", "status"])
    rejects = table.filter(pc.equal(table["key"], key)).to_pylist()
    if not rejects:
        return InspectError(f"{key}: no such sample in {path} (not in the index nor in the rejects)")
    last = next((r for r in rejects if r["status"] == "rejected"), rejects[-1])
    detail = f": {last['detail']}" if last["detail"] else ""
    return InspectError(f"{key} was not written: {last['status']} at {last['stage']} ({last['reason']}){detail}")


def read_sample_members(path: str, shard: str, key: str) -> dict[str, bytes]:
    """{member name: bytes} of ``key`` in one shard, reading the tar only up to the end of the sample."""
    fs, root = filesystem(path)
    members: dict[str, bytes] = {}
    with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file, tarfile.open(fileobj=file, mode="r|") as tar:
        for info in tar:
            name = posixpath.basename(info.name)
            if info.isfile() and name.partition(".")[0] == key:
                members[name] = tar.extractfile(info).read()
            elif members:
                break  # the sample's members are contiguous: it is complete
    return members


def feature_shape(data: bytes) -> tuple[str, list[int]]:
    """dtype name and shape of an ``.npy`` member (never unpickled)."""
    array = load_npy(data)
    return str(array.dtype), list(array.shape)


def find_shard(path: str, key: str) -> str | None:
    """The shard the index names for ``key``, or None."""
    index = read_index(path, ["key", "shard"])
    found = index.filter(pc.equal(index["key"], key))
    return found["shard"][0].as_py() if found.num_rows else None


def sample_details(path: str, key: str) -> dict[str, Any]:
    check_dataset(path)
    shard = find_shard(path, key)
    if shard is None:
        raise _not_written(path, key)
    members = read_sample_members(path, shard, key)
    if not members:
        raise InspectError(f"{key}: the index names shard {shard}, which does not hold it (run curate verify)")
    meta = json.loads(members.get(f"{key}.json", b"{}"))
    features = {name: feature_shape(data) for name, data in members.items() if name.endswith(".npy")}
    return {
        "key": key,
        "shard": f"{SHARDS_DIR}/{shard}",
        "members": {name: len(data) for name, data in members.items()},
        "features": {name: {"dtype": dtype, "shape": shape} for name, (dtype, shape) in features.items()},
        "metadata": meta,
    }


def caption_facts(meta: dict[str, Any], name: str) -> str:
    """``ok; 63 T5 tokens; flags: repetition`` for caption ``name`` (what the sample records of it)."""
    facts = [(meta.get("caption_status") or {}).get(name)]
    tokens = (meta.get("caption_t5_tokens") or {}).get(name)
    if tokens is not None:
        truncated = (meta.get("caption_t5_truncated") or {}).get(name)
        facts.append(f"{tokens} T5 tokens" + (", truncated to the T5 length" if truncated else ""))
    flags = (meta.get("caption_flags") or {}).get(name)
    if flags:
        facts.append("flags: " + ", ".join(flags))
    return "; ".join(str(fact) for fact in facts if fact)


def format_sample(details: dict[str, Any]) -> str:
    meta = details["metadata"]
    lines = [
        f"key       {details['key']}",
        f"source    {meta.get('source')}",
        f"shard     {details['shard']}",
        "members   " + "  ".join(f"{name} ({size:,} B)" for name, size in details["members"].items()),
        f"image     {meta.get('width')}x{meta.get('height')}  bucket {meta.get('bucket')} {meta.get('bucket_hw')}",
        "captions",
    ]
    for name, caption in (meta.get("captions") or {}).items():
        facts = caption_facts(meta, name)
        lines.append(f"  {name}{f' [{facts}]' if facts else ''}: {caption}")
    lines.append("features")
    for name, feature in details["features"].items():
        lines.append(f"  {name:<40} {feature['dtype']:<8} {tuple(feature['shape'])}")
    for field in ("scores", "filter_values", "filter_notes"):
        if meta.get(field):
            lines.append(f"{field}: " + ", ".join(f"{k} {v}" for k, v in meta[field].items()))
    lines.append(f"sha256    {meta.get('sha256')}  phash {meta.get('phash')}")
    return "\n".join(lines)
