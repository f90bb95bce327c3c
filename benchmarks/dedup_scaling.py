"""Time and memory of the dedup global step per million inputs, measured on synthetic hash tables.

Method: the global step (``pipelines.dedup.global_step``: duplicate keys, exact duplicates, banded near
duplicates, components) runs on Ray over synthetic ``HASH_SCHEMA`` tables of n/2 and n inputs (uniform
random pHashes and digests, 2% exact copies, 2% near copies within the radius, 0.1% repeated keys). Per
million inputs:

- ``seconds``: (t(n) - t(n/2)) / (n/2) x 10^6, the slope between the two sizes, which removes the fixed
  cost of starting Ray tasks; valid while the step is linear, i.e. while candidate pairs are few;
- ``candidate_pairs`` and ``candidate_cpu_seconds``: the quadratic term. A random pair shares one of the
  C(b, t) band values with probability C(b, t) / 2^(64 t / b); the pairs per million inputs times the
  measured vectorised Hamming-check rate (pairs per CPU second) gives the CPU time they add;
- ``peak_mib``: growth of the proportional set size (PSS: shared object-store pages counted once) of this
  process tree, sampled at 10 Hz while the step runs, extrapolated by the same two-size slope (noisy: worker
  processes started during a run count too);
- ``hash_table_mib`` / ``band_rows_mib``: Arrow bytes of the hash table and of the band rows the near
  step shuffles, per million inputs (exact: linear in the inputs); ``object_store_mib`` = hash table + twice
  the band rows (the sort shuffle's map outputs and reduce inputs), what the object store holds at the
  step's peak (spilled to disk beyond its capacity).

Each size runs ``repeats`` times and keeps its fastest and smallest figures (other load on the machine only
ever adds).

``compute_cpu_seconds`` is load-independent: the CPU time of the same table functions run in this process on
the n-input table as one partition (sorts, band rows, pair checks, components), without Ray's shuffle.
The hash pass itself is measured apart: ``hash_pass_cpu_seconds`` is the mean CPU time of
``image_hashes`` (draft decode + pHash) over the bundled photos, times a million.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from benchmarks.memory import PeakPSS, tree_pss
from curation.config import DedupConfig
from curation.stages.hashing import HASH_SCHEMA, image_hashes
from pipelines import dedup_groups as groups
from pipelines.dedup import CONTENT_SCHEMA, PARTITION_ROWS, global_step

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
MILLION = 1_000_000


def synthetic_hashes(n: int, radius: int = 6, seed: int = 0) -> pa.Table:
    """``HASH_SCHEMA`` rows: random inputs, 2% byte-identical copies, 2% near copies, 0.1% reused keys."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**64, n, dtype=np.uint64)
    digests = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    pixels = rng.integers(256 * 256, 2048 * 2048, n)
    near = rng.choice(n, size=(n // 50, 2), replace=False)
    flips = rng.integers(0, 64, (len(near), radius))
    noise = np.bitwise_or.reduce(np.left_shift(np.uint64(1), flips.astype(np.uint64)), axis=1)
    phash[near[:, 1]] = phash[near[:, 0]] ^ noise
    copies = rng.choice(n, size=(n // 50, 2), replace=False)  # after the near copies: same bytes, same pHash
    for column in (digests, phash, pixels):
        column[copies[:, 1]] = column[copies[:, 0]]
    keys = np.array([f"shard-{i // 1000:05d}_{i % 1000:06d}" for i in range(n)], dtype=object)
    reused = rng.choice(n, size=(max(1, n // 1000), 2), replace=False)
    keys[reused[:, 1]] = keys[reused[:, 0]]
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "key": keys,
            "source": [f"s3://bucket/raw/{key}.jpg" for key in keys],
            "sha256": pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(digests.tobytes())]),
            "phash": phash,
            "pixels": pixels,
        },
        schema=HASH_SCHEMA,
    )


def timed_step(table: pa.Table, config: DedupConfig, partition_rows: int) -> tuple[float, float]:
    """(seconds, peak PSS growth in MiB) of one global step over ``table``."""
    dataset = ray.data.from_arrow(table).repartition(max(1, table.num_rows // 20_000)).materialize()
    baseline, _ = tree_pss(os.getpid())
    with PeakPSS() as peak:
        start = time.perf_counter()
        global_step(dataset, CONTENT_SCHEMA.empty_table(), config, partition_rows)
        seconds = time.perf_counter() - start
    return seconds, max(0, peak.peak_bytes - baseline) / 2**20


def best_of(table: pa.Table, config: DedupConfig, partition_rows: int, repeats: int) -> tuple[float, float]:
    runs = [timed_step(table, config, partition_rows) for _ in range(repeats)]
    return min(seconds for seconds, _ in runs), min(peak for _, peak in runs)


def pair_check_rate(radius: int, masks: np.ndarray, pairs: int = 1 << 22) -> float:
    """Candidate pairs per CPU second through the vectorised Hamming check (one band group of random hashes)."""
    size = math.isqrt(2 * pairs) + 1
    hashes = np.random.default_rng(1).integers(0, 2**64, size, dtype=np.uint64)
    bands = pa.table(
        {"band": np.zeros(size, np.int16), "value": np.zeros(size, np.uint64), "id": np.arange(size), "phash": hashes},
        schema=groups.BAND_SCHEMA,
    )
    start = time.process_time()
    groups.band_edges(bands, radius, masks)
    return size * (size - 1) / 2 / max(time.process_time() - start, 1e-9)


def compute_cpu_seconds(table: pa.Table, config: DedupConfig) -> float:
    """CPU seconds of the global step's table functions on ``table`` as a single partition."""
    start = time.process_time()
    groups.duplicate_keys(table.select(["id", "key", "source"]))
    content = table.drop_columns(["source"]).append_column("written", pa.array(np.zeros(table.num_rows, bool)))
    exact = groups.exact_copies(content)
    survivors = exact.filter(pc.is_null(exact["copy_of"]))
    masks = groups.band_masks(config.near_duplicate_radius, config.band_key_blocks)
    bands = groups.band_rows(survivors["id"].to_numpy(), survivors["phash"].to_numpy(), masks)
    edges = groups.band_edges(bands, config.near_duplicate_radius, masks)
    groups.component_labels(edges)
    return time.process_time() - start


def hash_pass_cpu_seconds_per_input() -> float:
    photos = [path.read_bytes() for path in sorted(EXAMPLES.rglob("*.jpg")) if not path.name.startswith("broken")]
    image_hashes(photos[0])  # imports and caches outside the timing
    start = time.process_time()
    for data in photos:
        image_hashes(data)
    return (time.process_time() - start) / len(photos)


def scaling_measurement(n: int = 100_000, quick: bool = False) -> dict:
    """The ``scaling`` section of ``benchmarks/results.json``."""
    return measure(10_000, repeats=1) if quick else measure(n)


def measure(
    n: int = 100_000, config: DedupConfig | None = None, partition_rows: int = PARTITION_ROWS, repeats: int = 2
) -> dict:
    """The figures described in the module docstring; uses the connected Ray, else starts an embedded one."""
    config = config or DedupConfig()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        half, full = (
            synthetic_hashes(n // 2, config.near_duplicate_radius),
            synthetic_hashes(n, config.near_duplicate_radius),
        )
        timed_step(half, config, partition_rows)  # warm-up: worker processes, imports
        seconds_half, peak_half = best_of(half, config, partition_rows, repeats)
        seconds_full, peak_full = best_of(full, config, partition_rows, repeats)
    finally:
        if started_ray:
            ray.shutdown()
    masks = groups.band_masks(config.near_duplicate_radius, config.band_key_blocks)
    band_bits = 64 * config.band_key_blocks / (config.near_duplicate_radius + config.band_key_blocks)
    pairs = len(masks) * MILLION * (MILLION - 1) / 2 / 2**band_bits
    rate = pair_check_rate(config.near_duplicate_radius, masks)
    scale = MILLION / (n - n // 2)
    band_bytes = groups.band_rows(np.zeros(1, np.int64), np.zeros(1, np.uint64), masks).nbytes
    table_mib, band_mib = full.nbytes / n * MILLION / 2**20, band_bytes * MILLION / 2**20
    return {
        "inputs": n,
        "seconds": round(seconds_full, 3),
        "peak_mib": round(peak_full, 1),
        "per_million": {
            "seconds": round((seconds_full - seconds_half) * scale, 1),
            "peak_mib": round(max(0.0, peak_full - peak_half) * scale, 1),
            "candidate_pairs": round(pairs),
            "candidate_cpu_seconds": round(pairs / rate, 1),
            "hash_table_mib": round(table_mib, 1),
            "band_rows_mib": round(band_mib, 1),
            "object_store_mib": round(table_mib + 2 * band_mib, 1),
            "compute_cpu_seconds": round(compute_cpu_seconds(full, config) * MILLION / n, 1),
            "hash_pass_cpu_seconds": round(hash_pass_cpu_seconds_per_input() * MILLION, 1),
        },
        "config": {"radius": config.near_duplicate_radius, "bands": len(masks), "partition_rows": partition_rows},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "method": "global step on Ray over synthetic hash tables of n/2 and n inputs; per million = the slope "
        "between them (fixed Ray costs removed); candidate pairs from the band collision probability of random "
        "pHashes x the measured Hamming-check rate; PSS of the process tree sampled at 10 Hz",
    }
