"""What the report reads from a dataset, bounded so that a report of millions of samples stays cheap.

- the manifest (counts, funnel, stages, models, buckets, caption flags), or None for an unfinished build;
- index columns of every written sample (primary caption, T5 tokens, buckets, flags, scores when indexed);
- the rejects without their thumbnails, then the thumbnails of the few rejects shown;
- sample metadata (``KEY.json``) from the start of up to ``SAMPLE_SHARDS`` evenly spaced shards, with the images
  of the first ones (the gallery), and the images of the kept samples of the duplicate groups shown.
"""

from __future__ import annotations

import json
import math
import posixpath
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from curation.config import SCORE_NAMES
from curation.io.layout import (
    IMAGE_EXTS,
    INDEX_DIR,
    MANIFEST,
    REJECTS_DIR,
    SHARDS_DIR,
    filesystem,
    iter_tar_samples,
    list_names,
    read_json,
    read_rejects,
)
from curation.records import REJECTED

MAX_THUMBNAILS = 24  # gallery size
SAMPLE_SHARDS = 4  # shards whose first samples the report reads
JSON_PER_SHARD = 256  # sample metadata read per such shard (caption and score statistics of non-indexed values)
REJECT_COLUMNS = ["key", "source", "stage", "reason", "detail", "status"]
INDEX_COLUMNS = ["key", "shard", "bucket", "caption", "t5_tokens", "t5_truncated", "caption_flags"]
SCORE_COLUMNS = [f"score_{name}" for name in SCORE_NAMES]


@dataclass
class Sample:
    key: str
    shard: str
    meta: dict[str, Any]
    image: bytes | None = None


@dataclass
class ReportData:
    root: str
    manifest: dict[str, Any] | None
    index: dict[str, list]
    rejects: list[dict[str, Any]]  # one per input never written (a rejection wins over a failure)
    samples: list[Sample]  # metadata of the samples read from the shards
    gallery: list[Sample]  # the samples with their image, for the gallery
    fs: AbstractFileSystem = field(repr=False, default=None)

    @property
    def config(self) -> dict[str, Any]:
        return (self.manifest or {}).get("config") or {}


def load(path: str) -> ReportData:
    fs, root = filesystem(path)
    manifest = read_json(fs, f"{root}/{MANIFEST}")
    index = _read_index(fs, root)
    rejects = final_rejects(read_rejects(path, REJECT_COLUMNS).to_pylist(), set(index["key"]))
    samples, gallery = read_samples(fs, root, sorted(set(index["shard"])))
    return ReportData(root, manifest, index, rejects, samples, gallery, fs)


def _read_index(fs: AbstractFileSystem, root: str) -> dict[str, list]:
    """The index columns the report uses, file by file: the primary caption becomes its word count at once (a
    large dataset's captions never sit in memory together). Columns a file lacks (older layouts) read as None;
    ``score_<name>`` columns that no file has are left out."""
    index: dict[str, list] = {name: [] for name in [*INDEX_COLUMNS, *SCORE_COLUMNS]}
    for name in list_names(fs, f"{root}/{INDEX_DIR}", ".parquet"):
        with fs.open(f"{root}/{INDEX_DIR}/{name}", "rb") as handle:
            parquet = pq.ParquetFile(handle)
            present = [column for column in index if column in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
        if "caption" in present:
            words = pc.count_substring_regex(pc.fill_null(table["caption"], ""), r"\S+")  # as len(text.split())
            table = table.set_column(table.schema.get_field_index("caption"), "caption", words)
        for column in index:
            index[column] += table[column].to_pylist() if column in present else [None] * table.num_rows
    index["caption_words"] = index.pop("caption")
    empty = [name for name in SCORE_COLUMNS if all(v is None for v in index[name])]
    return {name: values for name, values in index.items() if name not in empty}


def final_rejects(rejects: list[dict[str, Any]], written: set[str]) -> list[dict[str, Any]]:
    """One record per key never written; a rejection wins over a failure (as in the manifest counts)."""
    by_key: dict[str, dict[str, Any]] = {}
    for record in rejects:
        kept = by_key.get(record["key"])
        if record["key"] not in written and (kept is None or kept["status"] != REJECTED):
            by_key[record["key"]] = record
    return list(by_key.values())


def reject_thumbnails(data: ReportData, keys: Collection[str]) -> dict[str, bytes]:
    """{key: thumbnail} of the given rejected keys, from the rejects files' optional ``thumbnail`` column."""
    wanted, found = set(keys), {}
    if not wanted:
        return found
    for name in list_names(data.fs, f"{data.root}/{REJECTS_DIR}", ".parquet"):
        with data.fs.open(f"{data.root}/{REJECTS_DIR}/{name}", "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if "thumbnail" not in parquet.schema_arrow.names:
                continue
            table = parquet.read(columns=["key", "thumbnail"])
        table = table.filter(pc.is_in(table["key"], value_set=_string_array(wanted - found.keys())))
        for key, thumbnail in zip(table["key"].to_pylist(), table["thumbnail"].to_pylist(), strict=True):
            if thumbnail:
                found.setdefault(key, thumbnail)
        if wanted <= found.keys():
            break
    return found


def _string_array(values: Collection[str]):
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def spread(items: list[str], count: int) -> list[str]:
    """Up to ``count`` items evenly spaced over ``items``, first and last included."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def read_samples(fs: AbstractFileSystem, root: str, shards: list[str]) -> tuple[list[Sample], list[Sample]]:
    """Metadata of the first ``JSON_PER_SHARD`` samples of up to ``SAMPLE_SHARDS`` evenly spaced shards, and the
    images of the first of them for the gallery (``MAX_THUMBNAILS`` in all, shared among those shards)."""
    chosen = spread(shards, SAMPLE_SHARDS)
    per_shard = math.ceil(MAX_THUMBNAILS / len(chosen)) if chosen else 0
    samples: list[Sample] = []
    gallery: list[Sample] = []
    for shard in chosen:
        with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file:
            for position, (key, members) in enumerate(iter_tar_samples(file, (*IMAGE_EXTS, "json"))):
                if position == JSON_PER_SHARD:
                    break
                sample = Sample(key, shard, _meta(members))
                samples.append(sample)
                image = next((members[ext] for ext in IMAGE_EXTS if ext in members), None)
                if position < per_shard and len(gallery) < MAX_THUMBNAILS and image is not None:
                    gallery.append(Sample(key, shard, sample.meta, image))
    return samples, gallery


def _meta(members: dict[str, bytes]) -> dict[str, Any]:
    try:
        meta = json.loads(members.get("json", b"{}"))
    except ValueError:  # a broken member is verify's business; the report shows what it can
        return {}
    return meta if isinstance(meta, dict) else {}


def kept_images(data: ReportData, keys: Collection[str], max_shards: int = SAMPLE_SHARDS) -> dict[str, bytes]:
    """{key: stored image} of written samples, opening at most ``max_shards`` shards (the ones with most keys)."""
    shard_of = dict(zip(data.index["key"], data.index["shard"], strict=True))
    by_shard: dict[str, set[str]] = {}
    for key in keys:
        if key in shard_of:
            by_shard.setdefault(shard_of[key], set()).add(key)
    found: dict[str, bytes] = {}
    for shard in sorted(by_shard, key=lambda name: (-len(by_shard[name]), name))[:max_shards]:
        with data.fs.open(f"{data.root}/{SHARDS_DIR}/{shard}", "rb") as file:
            found.update(read_members(file, by_shard[shard], IMAGE_EXTS))
    return found


def read_members(file, keys: Collection[str], extensions: Collection[str]) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of the first member with one of ``extensions`` of each wanted key; stops once all are found."""
    remaining = set(keys)
    with tarfile.open(fileobj=file, mode="r|") as tar:
        for info in tar:
            if not remaining:
                break
            key, _, extension = posixpath.basename(info.name).partition(".")
            if info.isfile() and key in remaining and extension in extensions:
                remaining.discard(key)
                yield key, tar.extractfile(info).read()
