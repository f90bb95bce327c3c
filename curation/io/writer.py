"""Writing a dataset: the Ray ``ShardSink`` and the driver-side run bookkeeping (prepare, resume, finalize).

The layout itself (directories, schemas, fsspec helpers, readers) is ``curation.io.layout``; readers of a
dataset import that module and never pay for Ray. Every file is written under a temporary name in its
final directory and renamed when complete. A shard's index is written after its tar, so a tar without
an index is an interrupted write: ``prepare_output`` deletes it and its samples are redone on resume.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from curation.config import SCORE_NAMES
from curation.io.keys import DUPLICATE_KEY
from curation.io.layout import (
    FILTER_VALUE_TYPES,
    IMAGE_EXTS,
    INDEX_DIR,
    INDEX_SCHEMA,
    MANIFEST,
    MANIFEST_FORMAT,
    REJECTS_DIR,
    REJECTS_SCHEMA,
    REPORT_DIR,
    RUN_DIR,
    SHARDS_DIR,
    STATE,
    TMP_PREFIX,
    atomic_write,
    filesystem,
    list_names,
    load_npz,
    npy_bytes,
    read_index,
    read_json,
    read_rejects,
    write_json,
)
from curation.records import FAILED, REJECTED, Row, is_ok, mark
from curation.thumbnails import NO_THUMBNAIL_REASONS

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext
    from ray.data.datasource.datasink import WriteResult

# Pipeline order of the stages that reject or fail inputs (the funnel lists them so).
FUNNEL_ORDER = ("read", "dedup", "filter", "scorers", "vae", "caption", "t5", "writer")
# Fixed member mtime (2000-01-01): the same samples always give byte-identical tars.
TAR_MTIME = 946_684_800
_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class OutputConflictError(RuntimeError):
    """The output directory holds a dataset built with another configuration."""


# ---------------------------------------------------------------- files


def _write_parquet(fs: AbstractFileSystem, path: str, table: pa.Table) -> None:
    atomic_write(fs, path, lambda file: pq.write_table(table, file))


# ---------------------------------------------------------------- one sample


def parse_json_field(value: str | None) -> dict[str, Any]:
    return json.loads(value) if value else {}


def _image_ext(row: Row) -> str:
    ext = (row.get("image_ext") or "").lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def incomplete_fields(row: Row) -> list[str]:
    """What an OK row lacks to become a sample (an upstream bug; the row fails instead of the task)."""
    required = ("image", "t5", "vae", "width", "height", "bucket", "bucket_h", "bucket_w", "t5_tokens")
    missing = [name for name in required if row.get(name) is None]
    if _image_ext(row) not in IMAGE_EXTS:
        missing.append("image_ext")
    if "dense" not in parse_json_field(row.get("captions")):
        missing.append('captions["dense"]')
    return missing


def sample_metadata(row: Row) -> dict[str, Any]:
    """The ``KEY.json`` member."""
    return {
        "key": row["key"],
        "source": row["source"],
        "width": row["width"],
        "height": row["height"],
        "bucket": row["bucket"],
        "bucket_hw": [row["bucket_h"], row["bucket_w"]],
        "captions": parse_json_field(row["captions"]),
        "caption_status": parse_json_field(row["caption_status"]),
        "caption_tokens": parse_json_field(row.get("caption_tokens")),
        "caption_flags": parse_json_field(row.get("caption_flags")),
        "t5_tokens": row["t5_tokens"],
        "t5_truncated": row["t5_truncated"],
        "caption_t5_tokens": parse_json_field(row.get("caption_t5_tokens")),
        "caption_t5_truncated": parse_json_field(row.get("caption_t5_truncated")),
        "sha256": row["sha256"],
        "phash": row["phash"],
        "filter_notes": parse_json_field(row["filter_notes"]),
        "filter_values": parse_json_field(row.get("filter_values")),
        "scores": parse_json_field(row.get("scores")),  # {} when no scorer is enabled
    }


def tar_sample(row: Row) -> dict[str, Any]:
    """A sample for ``TarWriter(encoder=False)``: every value is already bytes, so nothing is re-encoded."""
    meta = sample_metadata(row)
    sample = {
        "__key__": row["key"],
        _image_ext(row): bytes(row["image"]),
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        "txt": meta["captions"]["dense"].encode("utf-8"),
        "t5.npy": bytes(row["t5"]),
        "vae.npy": bytes(row["vae"]),
    }
    for name, features in (load_npz(row["t5_extra"]) if row.get("t5_extra") else {}).items():
        sample[f"t5.{name}.npy"] = npy_bytes(features)
    return sample


def index_record(row: Row, shard: str) -> dict[str, Any]:
    record = {name: row.get(name) for name in INDEX_SCHEMA.names}
    values = parse_json_field(row.get("filter_values"))
    record.update({f"filter_{name}": values.get(name) for name in FILTER_VALUE_TYPES})
    scores = parse_json_field(row.get("scores"))
    record.update({f"score_{name}": scores.get(name) for name in SCORE_NAMES})
    record.update(shard=shard, caption=parse_json_field(row["captions"])["dense"])
    return record


def reject_record(row: Row) -> dict[str, Any]:
    record = {name: row.get(name) for name in REJECTS_SCHEMA.names}
    if record["reason"] in NO_THUMBNAIL_REASONS or row.get("status") != REJECTED:
        record["thumbnail"] = None  # never a picture of an nsfw reject, whichever stage made one
    return record


ERRORS_PREFIX = "errors-"  # _run/errors-{run_id}-{task:05d}.jsonl: the FAILED rows of one write task
_ERROR_TYPE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")  # "ValueError: ..." as ``error_detail`` writes it


def error_record(row: Row, run_id: str) -> dict[str, Any]:
    """One line of ``_run/errors-*.jsonl``: a FAILED row with its traceback (when an exception failed it)."""
    detail = row.get("detail") or ""
    match = _ERROR_TYPE.match(detail) if row.get("error_trace") else None
    return {
        "key": row["key"],
        "source": row.get("source"),
        "stage": row.get("stage"),
        "reason": row.get("reason"),
        "error_type": match.group(1) if match else row.get("reason"),
        "message": detail,
        "traceback": row.get("error_trace"),
        "run_id": run_id,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def write_jsonl(fs: AbstractFileSystem, path: str, records: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)
    atomic_write(fs, path, lambda file: file.write(lines.encode("utf-8")))


def read_errors(output_dir: str) -> list[dict[str, Any]]:
    """Every entry of the dataset's error logs (all runs), in file-name order."""
    fs, root = filesystem(output_dir)
    records = []
    for name in list_names(fs, f"{root}/{RUN_DIR}", ".jsonl"):
        if name.startswith(ERRORS_PREFIX):
            with fs.open(f"{root}/{RUN_DIR}/{name}", "rb") as file:
                records += [json.loads(line) for line in file.read().decode("utf-8").splitlines() if line]
    return records


# ---------------------------------------------------------------- write tasks


def _write_tar(file: IO[bytes], rows: list[Row]) -> None:
    from webdataset.writer import TarWriter  # webdataset imports torch: only write tasks pay for it

    with TarWriter(file, encoder=False, mtime=TAR_MTIME) as writer:
        for row in rows:
            writer.write(tar_sample(row))


def write_shard(fs: AbstractFileSystem, root: str, stem: str, rows: list[Row]) -> str:
    """Tar first, then its index: an index always describes a complete tar. Returns the tar name."""
    tar_name = f"{stem}.tar"
    atomic_write(fs, f"{root}/{SHARDS_DIR}/{tar_name}", lambda file: _write_tar(file, rows))
    index = pa.Table.from_pylist([index_record(row, tar_name) for row in rows], schema=INDEX_SCHEMA)
    _write_parquet(fs, f"{root}/{INDEX_DIR}/{stem}.parquet", index)
    return tar_name


def _block_rows(blocks: Iterable[Block]) -> Iterator[Row]:
    for block in blocks:
        yield from BlockAccessor.for_block(block).to_arrow().to_pylist()


def _check_ok_row(row: Row) -> None:
    if is_ok(row) and (missing := incomplete_fields(row)):
        mark(row, FAILED, "writer", "incomplete_row", "missing: " + ", ".join(missing))


class ShardSink(Datasink[dict[str, Any]]):
    """Writes each Ray write task's rows as shards of ``samples_per_shard`` plus one rejects file.

    ``run_id`` must differ between runs on the same output (e.g. the start time): names are
    ``{run_id}-{task_idx}-...``, so a retried task rewrites its own files and a new run never
    overwrites an earlier run's shards.
    """

    def __init__(self, output_dir: str, samples_per_shard: int, run_id: str, recorder=None) -> None:
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run_id {run_id!r} may only hold [A-Za-z0-9_.-]")
        self.output_dir = output_dir
        self.samples_per_shard = samples_per_shard
        self.run_id = run_id
        self.recorder = recorder  # a pipelines.ray_stages.StatsRecorder handle, or None

    @property
    def min_rows_per_write(self) -> int:
        return self.samples_per_shard

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict[str, Any]:
        setup_start = time.perf_counter()
        import webdataset.writer  # noqa: F401  (imports torch: set-up of a fresh worker, not the writing)

        setup = time.perf_counter() - setup_start
        started, start = time.time(), time.perf_counter()
        waited = [0.0]  # seconds spent waiting for upstream blocks: not the writer's work
        result = self._write(_timed(blocks, waited), ctx)
        if self.recorder is not None:
            out = {"ok": result["written"], "rejected": result["rejected"], "failed": result["failed"]}
            busy = time.perf_counter() - start - waited[0]
            figures = {"rows_in": sum(out.values()), "rows_out": out, "seconds": busy, "waited_seconds": waited[0]}
            figures["setup_seconds"] = setup
            figures["worker"] = f"{os.uname().nodename}:{os.getpid()}"
            self.recorder.record.remote("write", {**figures, "started_at": started, "ended_at": time.time()})
        return result

    def _write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict[str, Any]:
        fs, root = filesystem(self.output_dir)
        prefix = f"{self.run_id}-{ctx.task_idx:05d}"
        pending: list[Row] = []
        shards: list[str] = []
        rejects: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        written = 0
        for row in _block_rows(blocks):
            _check_ok_row(row)
            if not is_ok(row):
                rejects.append(reject_record(row))
                if row["status"] == FAILED:
                    errors.append(error_record(row, self.run_id))
                continue
            pending.append(row)
            if len(pending) == self.samples_per_shard:
                shards.append(write_shard(fs, root, f"{prefix}-{len(shards):04d}", pending))
                written, pending = written + len(pending), []
        if pending:
            shards.append(write_shard(fs, root, f"{prefix}-{len(shards):04d}", pending))
            written += len(pending)
        if errors:  # before the rejects file: a failure recorded there always has its log entry
            write_jsonl(fs, f"{root}/{RUN_DIR}/{ERRORS_PREFIX}{prefix}.jsonl", errors)
        if rejects:
            table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
            _write_parquet(fs, f"{root}/{REJECTS_DIR}/{prefix}.parquet", table)
        statuses = Counter(record["status"] for record in rejects)
        return {"written": written, "rejected": statuses[REJECTED], "failed": statuses[FAILED], "shards": shards}

    def on_write_complete(self, write_result: WriteResult) -> None:
        """Nothing: the driver calls ``finalize`` once the whole pipeline has finished."""


def _timed(blocks: Iterable[Block], waited: list[float]) -> Iterator[Block]:
    """``blocks`` as they come, adding the time each took to arrive (the lazy iterator runs upstream) to waited[0]."""
    iterator = iter(blocks)
    while True:
        start = time.perf_counter()
        block = next(iterator, None)  # a block is a table, never None
        waited[0] += time.perf_counter() - start
        if block is None:
            return
        yield block


# ---------------------------------------------------------------- driver-side: prepare, resume, finalize


def _recorded_run(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """What the finished dataset (manifest) or the unfinished run (state) recorded: fingerprint, models."""
    for path in (f"{root}/{MANIFEST}", f"{root}/{STATE}"):
        recorded = read_json(fs, path)
        if recorded is not None:
            return recorded
    return None


# What, beside the config, decides a model's numbers: resuming with any of them changed would mix numerics.
NUMERICS_FIELDS = ("device", "dtype", "revision", "weights_sha256_sampled")


def model_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"vae dtype: float32 -> bfloat16"`` for each field of a model recorded on both sides that differs."""
    changes = []
    for model in sorted(recorded.keys() & current.keys()):
        before, now = recorded[model] or {}, current[model] or {}
        for field in NUMERICS_FIELDS:
            if field in before and field in now and before[field] != now[field]:
                changes.append(f"{model} {field}: {before[field]} -> {now[field]}")
    return changes


def _remove_if_exists(fs: AbstractFileSystem, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _delete_dataset(fs: AbstractFileSystem, root: str) -> None:
    """Only the files this module writes: anything else in the directory is left alone."""
    for name in (SHARDS_DIR, INDEX_DIR, REJECTS_DIR, RUN_DIR, REPORT_DIR, MANIFEST):
        _remove_if_exists(fs, f"{root}/{name}")


def _remove_temp_files(fs: AbstractFileSystem, root: str) -> None:
    for directory in (root, *(f"{root}/{d}" for d in (SHARDS_DIR, INDEX_DIR, REJECTS_DIR, RUN_DIR, REPORT_DIR))):
        try:
            paths = fs.ls(directory, detail=False)
        except FileNotFoundError:
            continue
        for path in paths:
            if posixpath.basename(path.rstrip("/")).startswith(TMP_PREFIX):
                fs.rm(path, recursive=True)


def _remove_unpaired_shards(fs: AbstractFileSystem, root: str) -> None:
    """A tar without index was interrupted; an index without tar lost its data. Both get redone."""
    tars = {name.removesuffix(".tar") for name in list_names(fs, f"{root}/{SHARDS_DIR}", ".tar")}
    indexes = {name.removesuffix(".parquet") for name in list_names(fs, f"{root}/{INDEX_DIR}", ".parquet")}
    for stem in tars - indexes:
        fs.rm(f"{root}/{SHARDS_DIR}/{stem}.tar")
    for stem in indexes - tars:
        fs.rm(f"{root}/{INDEX_DIR}/{stem}.parquet")


def prepare_output(
    output_dir: str, fingerprint: str, overwrite: bool = False, models: dict[str, Any] | None = None
) -> None:
    """Make ``output_dir`` ready for a (possibly resumed) run with config ``fingerprint`` and ``models``.

    ``models`` is what the manifest records per model ({name: {device, dtype, revision, weights hash, ...}}).
    A dataset of another fingerprint, or whose models ran with other numerics (``NUMERICS_FIELDS``), is
    refused, naming what changed, unless ``overwrite``, which deletes it. Otherwise the run resumes:
    leftovers of interrupted writes are removed, finished shards stay.
    """
    fs, root = filesystem(output_dir)
    recorded = _recorded_run(fs, root)
    if recorded is not None:
        changes = model_changes(recorded.get("models") or {}, models or {})
        if recorded.get("fingerprint") != fingerprint:
            changes.append(f"config fingerprint {recorded.get('fingerprint')}, this run's is {fingerprint}")
        if changes and not overwrite:
            raise OutputConflictError(
                f"{output_dir} holds a dataset built with other settings ({'; '.join(changes)}): resuming would "
                "mix them; choose another output or pass --overwrite to delete it"
            )
        if changes:
            _delete_dataset(fs, root)
    _remove_temp_files(fs, root)
    _remove_unpaired_shards(fs, root)
    _remove_if_exists(fs, f"{root}/{MANIFEST}")  # the dataset is in flux until finalize() writes it again
    write_json(fs, f"{root}/{STATE}", {"fingerprint": fingerprint, "models": models or {}, "prepared_at": _now()})


def done_keys(output_dir: str) -> set[str]:
    """Keys a resumed run skips: written or rejected. Failed keys are retried; a ``duplicate_key`` reject's key
    belongs to another input (which may still be pending), so it does not count."""
    keys = set(read_index(output_dir, ["key"])["key"].to_pylist())
    rejects = read_rejects(output_dir, ["key", "status", "reason"]).to_pylist()
    keys.update(row["key"] for row in rejects if row["status"] == REJECTED and row["reason"] != DUPLICATE_KEY)
    return keys


def _not_written_outcomes(written: set[str], rejects: dict[str, list]) -> dict[Any, tuple[str, str, str]]:
    """input -> (status, stage, reason) for inputs never written; a rejection wins over a failure (it is final).

    An input is its key, except for ``duplicate_key`` rejects: they share their key with the input that kept
    it, so they are told apart by (key, source).
    """
    outcomes: dict[Any, tuple[str, str, str]] = {}
    columns = (rejects["key"], rejects["source"], rejects["status"], rejects["stage"], rejects["reason"])
    for key, source, status, stage, reason in zip(*columns, strict=True):
        if reason == DUPLICATE_KEY:
            outcomes[(key, source)] = (status, stage or "", reason)
            continue
        if key in written or outcomes.get(key, ("",))[0] == REJECTED:
            continue
        outcomes[key] = (status, stage or "", reason or "")
    return outcomes


def _bucket_order(bucket: str) -> tuple[float, str]:
    try:
        return float(bucket), bucket
    except ValueError:
        return float("inf"), bucket


def _histogram(values: Iterable[str], order: Callable[[str], Any] | None = None) -> dict[str, int]:
    counts = Counter(values)
    return {value: counts[value] for value in sorted(counts, key=order or (lambda v: (-counts[v], v)))}


def dataset_summary(output_dir: str) -> dict[str, Any]:
    """Counts, the funnel, reason, bucket and caption-flag histograms and the shard list (index + rejects)."""
    index = read_index(output_dir, ["key", "shard", "bucket", "caption_flags"]).to_pydict()
    rejects = read_rejects(output_dir, ["key", "source", "status", "stage", "reason"]).to_pydict()
    bucket_of = dict(zip(index["key"], index["bucket"], strict=True))
    outcomes = _not_written_outcomes(set(bucket_of), rejects)
    statuses = Counter(status for status, _, _ in outcomes.values())
    counts = {"written": len(bucket_of), "rejected": statuses[REJECTED], "failed": statuses[FAILED]}
    return {
        "counts": {"input": sum(counts.values()), **counts},
        "funnel": funnel(outcomes.values()),
        "reject_reasons": _histogram(reason for status, _, reason in outcomes.values() if status == REJECTED),
        "failure_reasons": _histogram(reason for status, _, reason in outcomes.values() if status != REJECTED),
        "buckets": _histogram(bucket_of.values(), _bucket_order),
        "caption_flags": caption_flag_counts(index["caption_flags"]),
        "shards": sorted(set(index["shard"])),
    }


def funnel(outcomes: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, int]]:
    """{stage: {reason: inputs}} of every input not written, stages in pipeline order."""
    per_stage: dict[str, Counter] = {}
    for _, stage, reason in outcomes:
        per_stage.setdefault(stage or "unknown", Counter())[reason or "unknown"] += 1
    order = {name: i for i, name in enumerate(FUNNEL_ORDER)}
    ordered = sorted(per_stage, key=lambda stage: (order.get(stage, len(order)), stage))
    return {stage: dict(per_stage[stage].most_common()) for stage in ordered}


def caption_flag_counts(flag_maps: Iterable[str | None]) -> dict[str, dict[str, int]]:
    """{caption name: {flag: samples}} over the written samples (flag-free captions count under "none")."""
    counts: dict[str, Counter] = {}
    for value in flag_maps:
        for name, flags in parse_json_field(value).items():
            counts.setdefault(name, Counter()).update(flags or ["none"])
    return {name: dict(sorted(flag_counts.items())) for name, flag_counts in counts.items()}


def finalize(output_dir: str, manifest_fields: dict[str, Any], inputs_read: int | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` (last, atomically): caller's fields + the summary computed here.

    ``inputs_read`` is what the readers counted this run; ``counts.input`` is that number, and a
    difference from written + rejected + failed (inputs lost, or samples whose inputs were removed
    since an earlier run) is recorded as ``unaccounted``.
    """
    fs, root = filesystem(output_dir)
    summary = dataset_summary(output_dir)
    if inputs_read is not None:
        outcomes = summary["counts"]["input"]
        summary["counts"]["input"] = inputs_read
        if outcomes != inputs_read:
            summary["unaccounted"] = inputs_read - outcomes
    manifest = {"format_version": MANIFEST_FORMAT, **manifest_fields, **summary}
    write_json(fs, f"{root}/{MANIFEST}", manifest)
    return manifest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "OutputConflictError",
    "ShardSink",
    "done_keys",
    "finalize",
    "prepare_output",
    "read_errors",
]
