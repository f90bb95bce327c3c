"""Global, deterministic deduplication before any model stage, as Ray Data operations.

1. Hash pass: every read unit is read again (``readers.iter_unit``) by a CPU task that keeps, per input
   not finished by an earlier run, only a ``HASH_SCHEMA`` row: id (unit index, position), key, source,
   sha256, pHash, pixels. The image bytes never leave the reading task.
2. Global step over that table, each a ``groupby(...).map_groups`` on a bucket column so that one UDF
   call handles a whole partition with vectorised code (``pipelines/dedup_groups.py``):
   - duplicate keys (two inputs, one key): the first in input order keeps it, the others are rejected
     ``duplicate_key`` (detail: the kept input's source);
   - exact duplicates: one survivor per sha256;
   - near duplicates among the survivors: banded candidates + exact Hamming check → edges, collected on
     the driver (a few per near-duplicate), connected components there.
   Every group keeps one representative: samples already written (their hashes come from the index)
   first, then most pixels, then smallest key. Nothing depends on worker counts, block sizes or the
   order of the inputs. Rejected copies: ``duplicate`` (same bytes as the kept sample) or
   ``near_duplicate``, detail ``"KEPTKEY (same sha256)"`` / ``"KEPTKEY (hamming D)"``.
3. The main pass marks those inputs REJECTED (stage ``dedup``) as it reads them: each read unit carries
   its own rejections, so they never reach the filter or a model.

A representative that the main pass later rejects or fails takes its group with it: the duplicates are
not recovered automatically; their ``detail`` names the kept key, so a user can find them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.context import ShuffleStrategy

from curation.config import DedupConfig, ReaderConfig, Resources
from curation.io import readers
from curation.io.keys import DUPLICATE_KEY
from curation.io.layout import read_index, read_rejects
from curation.records import REJECTED, Row
from curation.stages.hashing import HASH_SCHEMA, HashStage, hash_table, input_id, split_input_id
from pipelines import dedup_groups as groups

log = logging.getLogger(__name__)

STAGE = "dedup"
DUPLICATE, NEAR_DUPLICATE = "duplicate", "near_duplicate"
PARTITION_ROWS = 250_000  # rows per groupby partition (one UDF call): bounds a task's memory
# The hash tables are small (~100 bytes per input): the sort-based shuffle's plain tasks start in a fraction of
# the time the hash shuffle's aggregator actors take (measured: 5.7 s vs 78 s for a first groupby on a loaded
# 2-core machine, both ~0.2 s once warm).
SHUFFLE = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
HASH_CHUNK_ROWS = 64
CONTENT_COLUMNS = ["id", "key", "sha256", "phash", "pixels", "written"]
CONTENT_SCHEMA = pa.schema([HASH_SCHEMA.field(name) for name in CONTENT_COLUMNS[:-1]] + [("written", pa.bool_())])


# ---------------------------------------------------------------- what earlier runs finished


@dataclass(frozen=True)
class FinishedInputs:
    """Inputs a resumed run skips: keys written or rejected, and (key, source) of ``duplicate_key`` rejects
    (their key belongs to another input, which may still be pending).
    """

    keys: frozenset[str] = frozenset()
    duplicate_key_inputs: frozenset[tuple[str, str]] = frozenset()

    def contains(self, row: Row) -> bool:
        return row["key"] in self.keys or (row["key"], row["source"]) in self.duplicate_key_inputs


def finished_inputs(output_dir: str) -> FinishedInputs:
    keys = set(read_index(output_dir, ["key"])["key"].to_pylist())
    rejects = read_rejects(output_dir, ["key", "source", "status", "reason"]).to_pylist()
    rejected = [row for row in rejects if row["status"] == REJECTED]
    keys.update(row["key"] for row in rejected if row["reason"] != DUPLICATE_KEY)
    pairs = frozenset((row["key"], row["source"]) for row in rejected if row["reason"] == DUPLICATE_KEY)
    return FinishedInputs(frozenset(keys), pairs)


@functools.lru_cache(maxsize=2)
def cached_finished(ref) -> FinishedInputs:
    """One deserialised copy per worker process of the object ``ref`` points to."""
    return ray.get(ref)


def written_hashes(output_dir: str) -> pa.Table:
    """``CONTENT_SCHEMA`` rows of the samples already written (ids -1, -2, ...): they stay representatives."""
    index = read_index(output_dir, ["key", "sha256", "phash", "width", "height"]).to_pylist()
    seen: dict[str, dict] = {row["key"]: row for row in index if row["sha256"]}
    rows = sorted(seen.values(), key=lambda row: row["key"])
    return pa.Table.from_pydict(
        {
            "id": [-1 - i for i in range(len(rows))],
            "key": [row["key"] for row in rows],
            "sha256": [bytes.fromhex(row["sha256"]) for row in rows],
            "phash": [int(row["phash"], 16) if row["phash"] else None for row in rows],
            "pixels": [(row["width"] or 0) * (row["height"] or 0) for row in rows],
            "written": [True] * len(rows),
        },
        schema=CONTENT_SCHEMA,
    )


# ---------------------------------------------------------------- 1. hash pass


def hash_units(
    table: pa.Table,
    reader_config: ReaderConfig,
    max_bytes: int,
    max_pixels: int,
    content: bool,
    finished_ref: list,
    recorder,
) -> Iterator[pa.Table]:
    """Ray task: the ``HASH_SCHEMA`` rows of read units (items ``index`` + ``unit`` JSON); ``content``
    False keeps keys only (no hashing).
    """
    finished = cached_finished(finished_ref[0])
    stage = HashStage(Resources(), max_pixels)
    for index, unit_json in zip(table["index"].to_pylist(), table["unit"].to_pylist(), strict=True):
        started, start = time.time(), time.perf_counter()
        rows, ids, counted = [], [], Counter()
        for position, row in enumerate(readers.iter_unit(json.loads(unit_json), reader_config, max_bytes=max_bytes)):
            if finished.contains(row):
                continue
            rows.append(row)
            ids.append(input_id(index, position))
            if len(rows) >= HASH_CHUNK_ROWS:
                yield _hashed(rows, ids, stage, content, counted)
                rows, ids = [], []
        if rows:
            yield _hashed(rows, ids, stage, content, counted)
        figures = {"rows_in": counted["rows"], "hashed": counted["hashed"], "seconds": time.perf_counter() - start}
        figures.update(worker=f"{os.uname().nodename}:{os.getpid()}", started_at=started, ended_at=time.time())
        recorder.record.remote(STAGE, figures)


def _hashed(rows: list[Row], ids: list[int], stage: HashStage, content: bool, counted: Counter) -> pa.Table:
    if content:
        stage.process_batch(rows)
    counted.update(rows=len(rows), hashed=sum(row["phash"] is not None for row in rows))
    return hash_table(rows, ids)


def hash_pass(
    units: list[dict], reader_config: ReaderConfig, max_bytes: int, max_pixels: int, content: bool, finished_ref,
    recorder,
) -> ray.data.Dataset:  # fmt: skip
    items = [{"index": index, "unit": json.dumps(unit)} for index, unit in enumerate(units)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return dataset.map_batches(
        hash_units,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "reader_config": reader_config,
            "max_bytes": max_bytes,
            "max_pixels": max_pixels,
            "content": content,
            "finished_ref": [finished_ref],
            "recorder": recorder,
        },
        num_cpus=1,
    )


# ---------------------------------------------------------------- 2. global step


@dataclass(frozen=True)
class Rejection:
    key: str
    reason: str
    detail: str


def partitions_for(rows: int, partition_rows: int = PARTITION_ROWS) -> int:
    return max(1, math.ceil(rows / partition_rows))


def collect(dataset: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    """A (small) dataset's rows on the driver as one table."""
    tables = [table for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([table.select(schema.names).cast(schema) for table in tables])


def _with_bucket(table: pa.Table, column: str, buckets: int) -> pa.Table:
    if column == "key":
        values = np.array([zlib.crc32(key.encode()) for key in table["key"].to_pylist()], dtype=np.uint64)
    elif column == "sha256":
        values = groups.sha_prefix(table["sha256"])
    else:  # band rows: (band, value)
        values = table["value"].to_numpy() ^ groups.mix64(table["band"].to_numpy().astype(np.uint64))
    return table.append_column("bucket", pa.array(groups.bucket_of(values, buckets)))


def _grouped(
    dataset: ray.data.Dataset, column: str, rows: int, partition_rows: int, udf, **kwargs
) -> ray.data.Dataset:
    buckets = partitions_for(rows, partition_rows)
    # the sort shuffle makes as many partitions as its input has blocks: one per bucket, not one per read chunk
    with_bucket = dataset.repartition(buckets).map_batches(
        _with_bucket, batch_format="pyarrow", fn_kwargs={"column": column, "buckets": buckets}, zero_copy_batch=True
    )
    return with_bucket.groupby("bucket", num_partitions=buckets).map_groups(
        _without_bucket, batch_format="pyarrow", fn_kwargs={"group_fn": udf, **kwargs}
    )


def _without_bucket(table: pa.Table, group_fn, **kwargs) -> pa.Table:
    return group_fn(table.drop_columns(["bucket"]), **kwargs)


def key_rejections(hashes: ray.data.Dataset, rows: int, partition_rows: int) -> dict[int, Rejection]:
    keyed = hashes.select_columns(["id", "key", "source"])
    found = collect(_grouped(keyed, "key", rows, partition_rows, groups.duplicate_keys), groups.KEY_REJECT_SCHEMA)
    return {
        row["id"]: Rejection(row["key"], DUPLICATE_KEY, f"{row['kept_source']} (read first, same key)")
        for row in found.to_pylist()
    }


def _content_rows(table: pa.Table, rejected_ref: list) -> pa.Table:
    rejected = pa.array(ray.get(rejected_ref[0]), type=pa.int64())
    keep = pc.and_(pc.is_valid(table["phash"]), pc.invert(pc.is_in(table["id"], value_set=rejected)))
    kept = table.filter(keep).select(CONTENT_COLUMNS[:-1])
    return kept.append_column("written", pa.array(np.zeros(kept.num_rows, dtype=bool)))


def _copies(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table["copy_of"])).select(["id", "key", "written", "copy_of", "copy_of_key"])


def _survivors(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_null(table["copy_of"])).select(CONTENT_COLUMNS)


def _band_rows(table: pa.Table, masks: np.ndarray) -> pa.Table:
    hashed = table.filter(pc.is_valid(table["phash"]))  # written samples of older datasets may lack a pHash
    return groups.band_rows(hashed["id"].to_numpy(), hashed["phash"].to_numpy(), masks)


def _rows_with_ids(table: pa.Table, ids_ref: list) -> pa.Table:
    return table.filter(pc.is_in(table["id"], value_set=pa.array(ray.get(ids_ref[0]), type=pa.int64())))


@dataclass
class GlobalResult:
    rejections: dict[int, Rejection] = field(default_factory=dict)  # input id -> why it is rejected
    counts: Counter = field(default_factory=Counter)  # rejections per reason
    figures: dict = field(default_factory=dict)  # rows, hashed, partitions, edges, candidates, seconds


def global_step(
    hashes: ray.data.Dataset, written: pa.Table, config: DedupConfig, partition_rows: int = PARTITION_ROWS
) -> GlobalResult:
    """Rejections of the hash table ``hashes`` (materialised), ``written`` joined as fixed representatives."""
    start = time.perf_counter()
    hashes.context.shuffle_strategy = SHUFFLE  # a dataset's own context: nothing else in the driver changes
    rows = hashes.count()
    result = GlobalResult(figures={"rows": rows, "written_joined": written.num_rows})
    if rows:  # nothing new (a resume with every input done): nothing to compare
        result.rejections.update(key_rejections(hashes, rows, partition_rows))
    if rows and config.enabled and (config.exact or config.near):
        rejected_ref = ray.put(sorted(result.rejections))
        content = hashes.map_batches(_content_rows, batch_format="pyarrow", fn_kwargs={"rejected_ref": [rejected_ref]})
        if written.num_rows:
            written_dataset = ray.data.from_arrow(written)
            written_dataset.context.shuffle_strategy = SHUFFLE
            content = content.union(written_dataset)
        content = content.materialize()
        result.figures["hashed"] = content.count() - written.num_rows
        if result.figures["hashed"]:
            _content_rejections(content, config, partition_rows, result)
    result.counts.update(rejection.reason for rejection in result.rejections.values())
    result.figures["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _content_rejections(
    content: ray.data.Dataset, config: DedupConfig, partition_rows: int, result: GlobalResult
) -> None:
    rows = content.count()
    copies = groups.EXACT_COPY_SCHEMA.empty_table()
    survivors = content
    if config.exact:
        exact = _grouped(content, "sha256", rows, partition_rows, groups.exact_copies).materialize()
        copies = collect(exact.map_batches(_copies, batch_format="pyarrow"), groups.EXACT_COPY_SCHEMA)
        survivors = exact.map_batches(_survivors, batch_format="pyarrow").materialize()
    kept_by: dict[int, groups.Kept] = {}
    if config.near:
        kept_by = _near_duplicates(survivors, config, partition_rows, result)
    for row in copies.to_pylist():
        if row["written"]:
            continue
        kept = kept_by.get(row["copy_of"])  # the survivor of its bytes may itself be a near duplicate
        if kept is None:
            result.rejections[row["id"]] = Rejection(row["key"], DUPLICATE, f"{row['copy_of_key']} (same sha256)")
        else:
            detail = f"{kept.kept_key} (hamming {kept.distance})"
            result.rejections[row["id"]] = Rejection(row["key"], NEAR_DUPLICATE, detail)


def _near_duplicates(
    survivors: ray.data.Dataset, config: DedupConfig, partition_rows: int, result: GlobalResult
) -> dict[int, groups.Kept]:
    radius = config.near_duplicate_radius
    masks = groups.band_masks(radius, config.band_key_blocks)
    rows = survivors.count() * len(masks)
    bands = survivors.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={"masks": masks})
    edges = collect(
        _grouped(
            bands, "band", rows, partition_rows, groups.band_edges, radius=config.near_duplicate_radius, masks=masks
        ),
        groups.EDGE_SCHEMA,
    )
    result.figures.update(band_rows=rows, bands=len(masks), edges=edges.num_rows)
    if not edges.num_rows:
        return {}
    nodes, labels = groups.component_labels(edges)
    ids_ref = ray.put(nodes)
    members = collect(
        survivors.map_batches(_rows_with_ids, batch_format="pyarrow", fn_kwargs={"ids_ref": [ids_ref]}),
        CONTENT_SCHEMA,
    )
    kept_by = groups.representatives(members, dict(zip(nodes.tolist(), labels.tolist(), strict=True)))
    written = set(pc.filter(members["id"], members["written"]).to_pylist())
    for node, kept in kept_by.items():
        if node not in written:
            detail = f"{kept.kept_key} (hamming {kept.distance})"
            result.rejections[node] = Rejection(kept.member_key, NEAR_DUPLICATE, detail)
    return kept_by


# ---------------------------------------------------------------- the whole step, for the pipeline


@dataclass
class DedupPlan:
    """What the main pass needs: per read unit index, {position: [key, reason, detail]}; and the figures."""

    by_unit: dict[int, dict[int, list[str]]]
    counts: Counter
    figures: dict


def plan_rejections(
    units: list[dict],
    reader_config: ReaderConfig,
    max_bytes: int,
    max_pixels: int,
    config: DedupConfig,
    finished: FinishedInputs,
    written: pa.Table,
    recorder,
    partition_rows: int = PARTITION_ROWS,
) -> DedupPlan:
    """Hash pass + global step; records the ``dedup`` stage figures with ``recorder``.

    With content dedup off, inputs are still read once more to find duplicate keys, unless their keys cannot
    collide (folder files under one root).
    """
    if not config.enabled and not keys_can_collide(units, reader_config):
        return DedupPlan({}, Counter(), {"skipped": "dedup disabled; keys of one folder root cannot collide"})
    started, start = time.time(), time.perf_counter()
    finished_ref = ray.put(finished)
    hashes = hash_pass(units, reader_config, max_bytes, max_pixels, config.enabled, finished_ref, recorder)
    hashes = hashes.materialize()
    hash_seconds = time.perf_counter() - start
    result = global_step(hashes, written, config, partition_rows)
    by_unit: dict[int, dict[int, list[str]]] = {}
    for row_id, rejection in sorted(result.rejections.items()):
        unit, position = split_input_id(row_id)
        by_unit.setdefault(unit, {})[position] = [rejection.key, rejection.reason, rejection.detail]
    rows = result.figures["rows"]
    rejected = len(result.rejections)
    recorder.record.remote(
        STAGE,
        {
            "rows_out": {"ok": rows - rejected, "rejected": rejected},
            "seconds": result.figures["seconds"],
            "started_at": started,
            "ended_at": time.time(),
        },
    )
    figures = {**result.figures, "hash_pass_seconds": round(hash_seconds, 3), **dict(sorted(result.counts.items()))}
    log.info("dedup: %d inputs, rejected %s", rows, dict(result.counts))
    return DedupPlan(by_unit, result.counts, figures)


def keys_can_collide(units: list[dict], reader_config: ReaderConfig) -> bool:
    """False when every input is a folder file under one root: their relative paths, hence keys, are distinct."""
    roots = {unit.get("root") for unit in units}
    return any(unit["kind"] != "folder" for unit in units) or len(roots) > 1 or bool(reader_config.key_column)
