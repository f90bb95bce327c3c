"""Integrity check of a built dataset against the product contract (``curate verify``).

Reads shards with plain ``tarfile`` and ``numpy.load(allow_pickle=False)``: what any consumer
would do, independent of the webdataset library that wrote them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import re
import sys
from collections import Counter
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image

from curation.io.layout import (
    IMAGE_EXTS,
    MANIFEST,
    SHARDS_DIR,
    filesystem,
    iter_tar_samples,
    list_names,
    load_npy,
    read_index,
    read_json,
)
from curation.terminal import progress

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MEMBERS = ("json", "txt", "t5.npy", "vae.npy")
META_TYPES: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "source": str,
    "width": int,
    "height": int,
    "bucket": str,
    "bucket_hw": list,
    "captions": dict,
    "caption_status": (dict, str),  # str: datasets built before per-caption maps
    "t5_tokens": int,
    "t5_truncated": bool,
    "sha256": str,
    "phash": (str, type(None)),
}
EXIF_ORIENTATION = 0x0112
SIDEWAYS_ORIENTATIONS = {5, 6, 7, 8}
INDEX_FIELDS = ("width", "height", "bucket", "t5_tokens")


# ---------------------------------------------------------------- dataset level


def _check_counts(manifest: dict[str, Any] | None, written_keys: int) -> list[str]:
    if manifest is None:
        return [f"{MANIFEST} missing: the build did not finish"]
    counts = manifest.get("counts")
    if not isinstance(counts, dict) or not {"input", "written", "rejected", "failed"} <= counts.keys():
        return [f"{MANIFEST}: counts must hold input, written, rejected, failed; got {counts!r}"]
    problems = []
    if counts["input"] != counts["written"] + counts["rejected"] + counts["failed"]:
        problems.append(f"{MANIFEST}: counts do not add up: {counts}")
    if counts["written"] != written_keys:
        problems.append(f"{MANIFEST}: counts.written={counts['written']} but the index holds {written_keys} keys")
    return problems


def _check_index(index_rows: list[dict[str, Any]], shard_names: set[str]) -> list[str]:
    problems = []
    duplicates = [key for key, n in Counter(row["key"] for row in index_rows).items() if n > 1]
    if duplicates:
        problems.append(f"index: {len(duplicates)} duplicate keys, e.g. {sorted(duplicates)[:5]}")
    bad_keys = [row["key"] for row in index_rows if not KEY_PATTERN.match(row["key"] or "")]
    if bad_keys:
        problems.append(f"index: keys outside [A-Za-z0-9_-], e.g. {bad_keys[:5]}")
    missing = sorted({row["shard"] for row in index_rows} - shard_names)
    if missing:
        problems.append(f"index: rows point at missing shards {missing[:5]}")
    return problems


def _pick_shards(names: list[str], fraction: float, seed: int) -> list[str]:
    if not names:
        return []
    count = min(len(names), max(1, math.ceil(fraction * len(names))))
    return sorted(random.Random(seed).sample(names, count))


# ---------------------------------------------------------------- one sample


def _upright_size(image_bytes: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image_bytes)) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in SIDEWAYS_ORIENTATIONS:
            return height, width
        return width, height


def _check_meta(key: str, meta: dict[str, Any]) -> list[str]:
    problems = [
        f"{key}.json: {field} missing or not {getattr(kind, '__name__', kind)}"
        for field, kind in META_TYPES.items()
        if not isinstance(meta.get(field), kind) or (kind is int and isinstance(meta.get(field), bool))
    ]
    if meta.get("key") != key:
        problems.append(f"{key}.json: key is {meta.get('key')!r}")
    if not isinstance(meta.get("captions"), dict) or not isinstance(meta["captions"].get("dense"), str):
        problems.append(f"{key}.json: captions has no dense caption")
    bucket_hw = meta.get("bucket_hw")
    if not (isinstance(bucket_hw, list) and len(bucket_hw) == 2 and all(isinstance(v, int) for v in bucket_hw)):
        problems.append(f"{key}.json: bucket_hw must be [h, w], got {bucket_hw!r}")
    if not SHA256_PATTERN.match(str(meta.get("sha256"))):
        problems.append(f"{key}.json: sha256 missing or not 64 hex digits")
    return problems


CAPTION_MAPS = ("caption_status", "caption_tokens", "caption_flags", "caption_t5_tokens", "caption_t5_truncated")
CAPTION_STATUSES = {"ok", "truncated", "empty", "error"}


def _check_caption_maps(key: str, meta: dict[str, Any]) -> list[str]:
    """Per-caption maps ({caption name: value}); absent in datasets built before them."""
    problems = []
    for field in CAPTION_MAPS:
        value = meta.get(field)
        if field != "caption_status" and value is None:
            continue
        if field == "caption_status" and isinstance(value, str):
            continue
        if not isinstance(value, dict):
            problems.append(f"{key}.json: {field} must be a {{caption name: value}} map, got {value!r}")
    statuses = meta.get("caption_status")
    if isinstance(statuses, dict) and not set(statuses.values()) <= CAPTION_STATUSES:
        problems.append(f"{key}.json: caption_status values outside {sorted(CAPTION_STATUSES)}: {statuses}")
    flags = meta.get("caption_flags") or {}
    if isinstance(flags, dict) and not all(isinstance(v, list) for v in flags.values()):
        problems.append(f"{key}.json: caption_flags values must be lists of flags")
    return problems


def _check_t5(key: str, member: str, data: bytes | None, tokens: Any) -> list[str]:
    if data is None:
        return [f"{key}.{member} missing"]
    try:
        t5 = load_npy(data)
    except Exception as error:  # pickled or corrupt arrays land here
        return [f"{key}.{member}: unreadable with allow_pickle=False ({error})"]
    if t5.dtype != np.float16 or t5.ndim != 2 or t5.shape[0] != tokens:
        return [f"{key}.{member}: {t5.dtype} {t5.shape}, want float16 [{tokens}, D]"]
    return []


def _check_arrays(key: str, members: dict[str, bytes], meta: dict[str, Any]) -> list[str]:
    problems = _check_t5(key, "t5.npy", members.get("t5.npy"), meta["t5_tokens"])
    for name, tokens in (meta.get("caption_t5_tokens") or {}).items():
        if name != "dense":
            problems += _check_t5(key, f"t5.{name}.npy", members.get(f"t5.{name}.npy"), tokens)
    try:
        vae = load_npy(members["vae.npy"])
        height, width = meta["bucket_hw"]
        want = (8, height // 8, width // 8)
        if vae.dtype != np.float16 or vae.shape != want:
            problems.append(f"{key}.vae.npy: {vae.dtype} {vae.shape}, want float16 {want}")
    except Exception as error:
        problems.append(f"{key}.vae.npy: unreadable with allow_pickle=False ({error})")
    return problems


def _check_image(key: str, members: dict[str, bytes], meta: dict[str, Any]) -> list[str]:
    images = [ext for ext in IMAGE_EXTS if ext in members]
    if len(images) != 1:
        return [f"{key}: want exactly one image member ({'/'.join(IMAGE_EXTS)}), found {images}"]
    try:
        size = _upright_size(members[images[0]])
    except Exception as error:
        return [f"{key}.{images[0]}: not a readable image ({error})"]
    if size != (meta["width"], meta["height"]):
        return [f"{key}.json: width x height {meta['width']}x{meta['height']} but the image is {size[0]}x{size[1]}"]
    return []


def _check_against_index(key: str, meta: dict[str, Any], index_row: dict[str, Any] | None) -> list[str]:
    if index_row is None:
        return [f"{key}: in the shard but not in its index"]
    return [
        f"{key}: json {field}={meta.get(field)!r} but index has {index_row[field]!r}"
        for field in INDEX_FIELDS
        if meta.get(field) != index_row[field]
    ]


def check_sample(key: str, members: dict[str, bytes], index_row: dict[str, Any] | None) -> list[str]:
    """Every contract rule for one sample; returns its problems."""
    missing = [name for name in MEMBERS if name not in members]
    if missing:
        return [f"{key}: missing members {missing}"]
    try:
        meta = json.loads(members["json"])
    except ValueError as error:
        return [f"{key}.json: not JSON ({error})"]
    if not isinstance(meta, dict):
        return [f"{key}.json: not a JSON object"]
    problems = _check_meta(key, meta)
    if problems:
        return problems
    problems += _check_caption_maps(key, meta)
    problems += _check_image(key, members, meta)
    problems += _check_arrays(key, members, meta)
    if members["txt"].decode("utf-8", "replace") != meta["captions"]["dense"]:
        problems.append(f"{key}.txt differs from captions['dense']")
    return problems + _check_against_index(key, meta, index_row)


# ---------------------------------------------------------------- one shard


def check_shard(fs: AbstractFileSystem, root: str, shard: str, index_rows: dict[str, dict[str, Any]]) -> list[str]:
    """Stream one tar: each sample's members, unique keys, and the same key set as its index."""
    problems, seen = [], set()
    try:
        with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file:
            for key, members in iter_tar_samples(file):
                if key in seen:
                    problems.append(f"{shard}: key {key} appears twice (or its members are not contiguous)")
                seen.add(key)
                problems += [f"{shard}: {p}" for p in check_sample(key, members, index_rows.get(key))]
    except Exception as error:  # a truncated or non-tar file
        return [*problems, f"{shard}: unreadable tar ({error})"]
    absent = sorted(index_rows.keys() - seen)
    if absent:
        problems.append(f"{shard}: {len(absent)} indexed keys not in the tar, e.g. {absent[:5]}")
    return problems


def verify_dataset(path: str, fraction: float = 1.0, seed: int = 0, recompute: float = 0.0) -> list[str]:
    """Problems found in the dataset at ``path`` (empty means OK). Tars of a ``fraction`` of shards are read;
    the features of a ``recompute`` fraction of samples are encoded again and compared
    (``curation.recompute``)."""
    fs, root = filesystem(path)
    index_rows = read_index(path).to_pylist()
    shard_names = list_names(fs, f"{root}/{SHARDS_DIR}", ".tar")
    problems = _check_counts(read_json(fs, f"{root}/{MANIFEST}"), len({row["key"] for row in index_rows}))
    problems += _check_index(index_rows, set(shard_names))
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for row in index_rows:
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    unindexed = sorted(set(shard_names) - by_shard.keys())
    problems += [f"{name}: shard has no index rows" for name in unindexed]
    picked = _pick_shards(sorted(by_shard.keys() & set(shard_names)), fraction, seed)
    for shard in progress(picked, desc="verify", unit="shard"):
        problems += check_shard(fs, root, shard, by_shard[shard])
    if recompute > 0:
        from curation.recompute import recompute_problems  # loads T5 and the VAE: only when asked

        problems += recompute_problems(path, recompute, seed)
    return problems


def run(path: str, fraction: float = 1.0, seed: int = 0, recompute: float = 0.0) -> int:
    """Print the problems (or OK) and return a process exit code: 0 when the dataset is sound."""
    problems = verify_dataset(path, fraction, seed, recompute)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    from curation.cli import verify_arguments

    parser = argparse.ArgumentParser(prog="curate verify", description=__doc__.splitlines()[0])
    verify_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.dataset, args.fraction, args.seed, args.recompute)


if __name__ == "__main__":
    sys.exit(main())
