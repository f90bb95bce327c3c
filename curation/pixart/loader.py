"""Train PixArt straight from the curated shards: bucket-homogeneous batches, no export step.

``ShardBucketDataset`` reads the parquet index once (never scans the tars at start-up), gives every
consumer (rank × DataLoader worker) its own whole shards, streams them, groups samples by aspect-ratio
bucket and yields ready batches in the form PixArt's ``train_scripts/train.py`` loop consumes::

    latents    (B, 4, h/8, w/8) float32, z = mean + std·ε, unscaled (multiply by config.scale_factor)
    y          (B, 1, T, D) float32, T5 features re-padded to T
    y_mask     (B, 1, 1, T) int64, 1 for real tokens
    data_info  {"img_hw": (B, 2) float32 [height, width] of the stored image, "aspect_ratio": (B,) float32}
    keys       list of B dataset keys

Use it with ``DataLoader(dataset, batch_size=None, num_workers=N)`` (the dataset batches itself) and do
not pass that DataLoader through ``accelerator.prepare``: Accelerate would shard or dispatch it a second
time. See docs/training.md for both PixArt's loop and a diffusers-style loop.

The module also holds the few dataset-reading helpers the PixArt exporter shares.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from fsspec import AbstractFileSystem
from torch.utils.data import IterableDataset, get_worker_info

from curation.io.layout import SHARDS_DIR, filesystem, iter_tar_samples, load_npy, read_index, read_manifest

_INDEX_COLUMNS = ["key", "shard", "bucket"]
TRAINING_MEMBERS = ("json", "t5.npy", "vae.npy")  # training never decodes the image: skip its bytes


def read_sorted_index(dataset_uri: str) -> pa.Table:
    """``key, shard, bucket`` of every sample, sorted by shard then key (the work split relies on it)."""
    index = read_index(dataset_uri, _INDEX_COLUMNS)
    if index.num_rows == 0:
        raise FileNotFoundError(f"{dataset_uri}: the index has no rows")
    return index.sort_by([("shard", "ascending"), ("key", "ascending")])


def iter_shard(
    fs: AbstractFileSystem,
    root: str,
    shard: str,
    keep: Callable[[str], bool] | None = None,
    extensions: Collection[str] | None = None,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream the samples of ``shards/<shard>`` (only the keys ``keep`` accepts, only ``extensions`` read)."""
    with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file:
        for key, members in iter_tar_samples(file, extensions):
            if keep is None or keep(key):
                yield key, members


def pad_tokens(features: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, D]`` real tokens → ``([length, D], mask[length])``; pads by repeating the last token, as PixArt does."""
    real = features.shape[0]
    if real > length:
        raise ValueError(f"{real} T5 tokens do not fit max_length {length} (PixArt refuses longer features)")
    padded = np.zeros((length, features.shape[1]), dtype=features.dtype)
    padded[:real] = features
    if 0 < real < length:
        padded[real:] = features[-1]
    mask = np.zeros(length, dtype=np.int64)
    mask[:real] = 1
    return padded, mask


# ---------------------------------------------------------------------------------------------------------
# Work assignment: whole shards per consumer, key slices when consumers outnumber shards.


@dataclass(frozen=True)
class Assignment:
    """Read ``shard`` and keep its sorted keys ``[slot::sharers]`` (``sharers == 1``: the whole shard)."""

    shard: str
    slot: int = 0
    sharers: int = 1


def assign_work(
    shards: Iterable[str], consumer: int, consumers: int, order_seed: int | None = None
) -> list[Assignment]:
    """What one consumer reads; over all ``consumers`` every key is read exactly once.

    With at least as many shards as consumers, whole shards go round-robin (after an optional shuffle of
    the shard order that every consumer repeats identically). With fewer shards, consumer ``c`` reads
    shard ``c % n`` together with the other consumers mapped to it and keeps every k-th key of the sorted
    key list. Positions in a sorted list, rather than ``hash()`` (salted per process, so DataLoader workers
    would disagree), make the split exact and identical in every process.
    """
    ordered = sorted(shards)
    if order_seed is not None:
        random.Random(order_seed).shuffle(ordered)
    if not ordered:
        return []
    if len(ordered) >= consumers:
        return [Assignment(shard) for shard in ordered[consumer::consumers]]
    position = consumer % len(ordered)
    sharers = len(range(position, consumers, len(ordered)))
    return [Assignment(ordered[position], consumer // len(ordered), sharers)]


def count_batches(bucket_sizes: Iterable[int], batch_size: int, drop_last: bool) -> int:
    if drop_last:
        return sum(size // batch_size for size in bucket_sizes)
    return sum(-(-size // batch_size) for size in bucket_sizes)


# ---------------------------------------------------------------------------------------------------------
# Samples and batches.


@dataclass
class Sample:
    key: str
    bucket: str
    height: int
    width: int
    t5: np.ndarray  # [t5_tokens, D]
    vae: np.ndarray  # [8, h/8, w/8]: mean ‖ std

    @classmethod
    def from_files(cls, key: str, files: dict[str, bytes]) -> Sample:
        meta = json.loads(files["json"])
        t5, vae = load_npy(files["t5.npy"]), load_npy(files["vae.npy"])
        return cls(key, meta["bucket"], int(meta["height"]), int(meta["width"]), t5, vae)


def shuffled(samples: Iterable[Sample], buffer_size: int, rng: random.Random) -> Iterator[Sample]:
    """Bounded shuffle buffer: memory stays at ``buffer_size`` samples however big the shards are."""
    buffer: list[Sample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def bucket_batches(samples: Iterable[Sample], batch_size: int, drop_last: bool) -> Iterator[list[Sample]]:
    """Same-bucket batches; the latent shape is part of the group so a batch always stacks."""
    pending: dict[tuple, list[Sample]] = defaultdict(list)
    for sample in samples:
        group = pending[(sample.bucket, sample.vae.shape)]
        group.append(sample)
        if len(group) == batch_size:
            yield group[:]
            group.clear()
    if not drop_last:
        yield from (group for group in pending.values() if group)


def collate(samples: list[Sample], max_length: int, generator: torch.Generator) -> dict[str, Any]:
    moments = torch.from_numpy(np.stack([sample.vae for sample in samples])).float()
    mean, std = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator)
    padded = [pad_tokens(sample.t5, max_length) for sample in samples]
    y = torch.from_numpy(np.stack([features for features, _ in padded])).float()
    y_mask = torch.from_numpy(np.stack([mask for _, mask in padded]))
    return {
        "latents": mean + std * noise,
        "y": y[:, None],
        "y_mask": y_mask[:, None, None],
        "data_info": {
            "img_hw": torch.tensor([[s.height, s.width] for s in samples], dtype=torch.float32),
            "aspect_ratio": torch.tensor([float(s.bucket) for s in samples], dtype=torch.float32),
        },
        "keys": [sample.key for sample in samples],
    }


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise ValueError(f"pass both rank and world_size with 0 <= rank < world_size (got {rank}, {world_size})")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardBucketDataset(IterableDataset):
    """Bucket-homogeneous PixArt batches streamed from a curated dataset (local or fsspec URL).

    Each (rank, DataLoader worker) pair reads its own whole shards, so no sample is read twice; when there
    are fewer shards than consumers, consumers share a shard and split its keys. Ranks, if not given, come
    from ``torch.distributed``. ``set_epoch`` reshuffles the shard assignment, the sample order and the
    latent noise; the epoch reaches workers when the DataLoader starts an epoch, so do not use
    ``persistent_workers=True``.

    Ranks can end up with different numbers of batches (shards and buckets differ in size). With DDP that
    stalls the last collective of an epoch; ``even_batches=True`` stops every consumer after the smallest
    consumer's batch count (computed from the index; assumes the same ``num_workers`` on every rank).
    ``num_batches(num_workers)`` gives this rank's batch count (PixArt sizes its LR schedule with it).

    In PixArt's loop::

        for batch in DataLoader(dataset, batch_size=None, num_workers=4):
            clean_images = batch["latents"].to(device) * config.scale_factor
            y, y_mask = batch["y"].to(device), batch["y_mask"].to(device)
            data_info = {k: v.to(device) for k, v in batch["data_info"].items()}
    """

    def __init__(
        self,
        dataset_uri: str,
        batch_size: int,
        max_length: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        shuffle_buffer: int = 256,
        even_batches: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.fs, self.root = filesystem(dataset_uri)
        self.manifest = read_manifest(self.fs, self.root)
        self.max_length = max_length or int(self.manifest["config"]["t5"]["max_length"])
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.even_batches = shuffle_buffer, even_batches
        self.epoch = 0
        # Kept columnar: a Python object per row would cost ~100 B × rows in every worker process.
        self.index = read_sorted_index(dataset_uri)
        self.shards: list[str] = self.index.column("shard").unique().to_pylist()
        self.shard_buckets = _bucket_counts(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank yields in the current epoch with a DataLoader of ``num_workers`` workers."""
        rank, world = _rank_and_world(self.rank, self.world_size)
        workers = max(num_workers, 1)
        counts = [self._consumer_batches(consumer, world * workers) for consumer in range(world * workers)]
        if self.even_batches:
            return min(counts) * workers
        return sum(counts[rank * workers : (rank + 1) * workers])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer, consumers = self._consumer()
        seed = _seed(self.seed, self.epoch, consumer)
        samples: Iterable[Sample] = self._samples(self._work(consumer, consumers))
        if self.shuffle:
            samples = shuffled(samples, self.shuffle_buffer, random.Random(seed))
        batches: Iterable[list[Sample]] = bucket_batches(samples, self.batch_size, self.drop_last)
        if self.even_batches:
            batches = islice(batches, min(self._consumer_batches(c, consumers) for c in range(consumers)))
        generator = torch.Generator().manual_seed(seed)
        for group in batches:
            yield collate(group, self.max_length, generator)

    def _consumer(self) -> tuple[int, int]:
        rank, world = _rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def _work(self, consumer: int, consumers: int) -> list[Assignment]:
        order_seed = _seed(self.seed, self.epoch) if self.shuffle else None
        return assign_work(self.shards, consumer, consumers, order_seed)

    def _shard_rows(self, assignment: Assignment) -> tuple[list[str], list[str]]:
        """Keys and buckets this assignment keeps (the index is sorted by shard, then key)."""
        rows = self.index.filter(pc.equal(self.index.column("shard"), assignment.shard))
        keep = slice(assignment.slot, None, assignment.sharers)
        return rows.column("key").to_pylist()[keep], rows.column("bucket").to_pylist()[keep]

    def _consumer_batches(self, consumer: int, consumers: int) -> int:
        sizes: dict[str, int] = defaultdict(int)
        for assignment in self._work(consumer, consumers):
            if assignment.sharers == 1:
                buckets = self.shard_buckets[assignment.shard]
            else:
                buckets = Counter(self._shard_rows(assignment)[1])
            for bucket, count in buckets.items():
                sizes[bucket] += count
        return count_batches(sizes.values(), self.batch_size, self.drop_last)

    def _samples(self, work: list[Assignment]) -> Iterator[Sample]:
        for assignment in work:
            keep = None if assignment.sharers == 1 else frozenset(self._shard_rows(assignment)[0]).__contains__
            for key, files in iter_shard(self.fs, self.root, assignment.shard, keep, TRAINING_MEMBERS):
                yield Sample.from_files(key, files)


def _bucket_counts(index: pa.Table) -> dict[str, Counter]:
    counts: dict[str, Counter] = defaultdict(Counter)
    grouped = index.group_by(["shard", "bucket"]).aggregate([("key", "count")])
    columns = (grouped.column(name).to_pylist() for name in ("shard", "bucket", "key_count"))
    for shard, bucket, count in zip(*columns, strict=True):
        counts[shard][bucket] = count
    return dict(counts)
