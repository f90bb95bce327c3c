"""``curate export pixart``: write a curated dataset in the exact layout PixArt's own dataset classes read.

The folders come from the loaders, not from PixArt's extractors, which disagree with them (reference
pixart_formats.md §0, §3b, §8). Every image gets a flat name ``KEY.png``, so each loader's name rule
(``dir_stem``, basename, ``.png`` swap) finds the same feature files.

Under ``DEST/InternData/`` (JSON folder; T5 ``.npz`` folders; VAE ``.npy`` folder):

* α multi-scale, ``InternalDataMS`` of A (``partition_filter/``) and of S (root): ``caption_feature_wmask/``
  (A) and ``caption_features/`` (S); ``img_vae_fatures_{res}_multiscale/ms/`` (PixArt's typo).
* α single-scale, ``InternalData`` (A and S): ``partition/``; ``caption_feature_wmask/``;
  ``img_vae_features_{res}resolution/noflip/``.
* Σ multi-scale, ``InternalDataMSSigma``: root; ``caption_features_new/`` and
  ``sharegpt4v_caption_features_new/``; ``img_sdxl_vae_features_{res}resolution_ms_new/``.
* Σ single-scale, ``InternalDataSigma``: root; same T5 folders; ``img_sdxl_vae_features_{res}resolution_new/``.

Shards are streamed one at a time; only the small JSON entries are held for the final shuffle.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image

from curation.buckets import bucket_for
from curation.io.layout import IMAGE_EXTS, filesystem, load_npy, read_index, read_manifest
from curation.pixart.embed_files import null_embed_name
from curation.pixart.layout import ExportPlan, plan_export
from curation.pixart.loader import iter_shard, pad_tokens

JSON_NAME = "data_info.json"
PRIMARY_CAPTION = "dense"
SECOND_CAPTION_BATCH = 32
COUNTS = (
    "exported",
    "second_caption",
    "second_caption_features",
    "skipped_not_square",
    "skipped_inconsistent",
    "skipped_incomplete",
    "skipped_duplicate_key",
)
# PNG stores these modes as they are; anything else (CMYK, YCbCr, …) is converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}

Encoder = Callable[[list[str]], list[np.ndarray]]


# ---------------------------------------------------------------------------------------------------------
# Files PixArt reads.


def png_bytes(data: bytes, ext: str) -> bytes:
    if ext == "png":
        return data
    with Image.open(io.BytesIO(data)) as image:
        converted = image if image.mode in _PNG_MODES else image.convert("RGB")
        out = io.BytesIO()
        converted.save(out, format="PNG")  # no exif= argument: EXIF (orientation) is dropped
    return out.getvalue()


def write_caption_npz(plan: ExportPlan, path: Path, features: np.ndarray) -> None:
    """``caption_feature`` (1, T, D) and ``attention_mask`` (1, T), as the flavor's extractor saves them."""
    padded, mask = pad_tokens(features, plan.max_length)
    np.savez_compressed(
        path,
        caption_feature=padded[None].astype(plan.layout.feature_dtype),
        attention_mask=mask[None].astype(plan.layout.mask_dtype),
    )


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)  # α multi-scale needs the same npz in two folders: no second copy on disk
    except OSError:
        shutil.copyfile(source, target)


@dataclass
class PreparedSample:
    key: str
    entry: dict[str, Any]
    image: bytes
    image_ext: str
    t5: np.ndarray
    vae: np.ndarray
    second_caption: tuple[str, str] | None  # (caption name, text)


def write_sample(plan: ExportPlan, sample: PreparedSample) -> None:
    (plan.image_dir / f"{sample.key}.png").write_bytes(png_bytes(sample.image, sample.image_ext))
    first, *others = plan.caption_paths(sample.key)
    write_caption_npz(plan, first, sample.t5)
    for other in others:
        _link_or_copy(first, other)
    np.save(plan.vae_path(sample.key), sample.vae.astype(plan.layout.vae_dtype, copy=False))


def _second_caption(captions: dict[str, str]) -> tuple[str, str] | None:
    for name, text in captions.items():
        if name != PRIMARY_CAPTION and text:
            return name, text
    return None


def _skip_reason(plan: ExportPlan, meta: dict[str, Any], height: int, width: int, vae_shape: tuple) -> str | None:
    """Why a sample cannot be exported: PixArt picks the bucket from the JSON size, so it must give the latent."""
    bucket, (bucket_h, bucket_w) = bucket_for(height, width, plan.resolution)
    if bucket != meta.get("bucket") or tuple(vae_shape) != (8, bucket_h // 8, bucket_w // 8):
        return "skipped_inconsistent"
    if plan.single_scale and bucket != "1.0":
        return "skipped_not_square"
    return None


def prepare_sample(plan: ExportPlan, key: str, files: dict[str, bytes], stats: Counter) -> PreparedSample | None:
    image_ext = next((ext for ext in IMAGE_EXTS if ext in files), None)
    if image_ext is None or not {"json", "t5.npy", "vae.npy"} <= files.keys():
        stats["skipped_incomplete"] += 1
        return None
    meta = json.loads(files["json"])
    with Image.open(io.BytesIO(files[image_ext])) as image:
        width, height = image.size  # JSON dims must be what PIL reports for the stored file (§8.5)
    vae = load_npy(files["vae.npy"])
    reason = _skip_reason(plan, meta, height, width, vae.shape)
    if reason:
        stats[reason] += 1
        return None
    captions = meta.get("captions") or {}
    prompt = captions.get(PRIMARY_CAPTION) or files.get("txt", b"").decode()
    second = _second_caption(captions)
    entry = {"path": f"{key}.png", "prompt": prompt, "height": height, "width": width, "ratio": height / width}
    if plan.flavor == "sigma":
        entry["sharegpt4v"] = second[1] if second else ""
    return PreparedSample(key, entry, files[image_ext], image_ext, load_npy(files["t5.npy"]), vae, second)


class SecondCaptionWriter:
    """Encodes second captions in batches with the caller's encoders and writes the sharegpt4v npz files."""

    def __init__(self, plan: ExportPlan, encoders: dict[str, Encoder] | None) -> None:
        self.plan, self.encoders = plan, encoders or {}
        self.pending: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.written = 0

    def add(self, key: str, caption: tuple[str, str] | None) -> None:
        if caption is None or self.plan.layout.second_caption_dir is None or caption[0] not in self.encoders:
            return
        batch = self.pending[caption[0]]
        batch.append((key, caption[1]))
        if len(batch) >= SECOND_CAPTION_BATCH:
            self._encode(caption[0])

    def flush(self) -> None:
        for name in list(self.pending):
            self._encode(name)

    def _encode(self, name: str) -> None:
        keys, texts = zip(*self.pending.pop(name), strict=True)
        features = self.encoders[name](list(texts))
        if len(features) != len(keys):
            raise ValueError(f"extra_features[{name!r}] returned {len(features)} arrays for {len(keys)} texts")
        for key, array in zip(keys, features, strict=True):
            write_caption_npz(self.plan, self.plan.second_caption_path(key), np.asarray(array))
        self.written += len(keys)


def _copy_out(fs: AbstractFileSystem, source: str, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(target)


def copy_embeddings(fs: AbstractFileSystem, root: str, plan: ExportPlan) -> dict[str, Any]:
    """Null and validation-prompt embeddings from ``DIR/embeddings/`` to PixArt's paths under ``DEST/output/``."""
    null_name = null_embed_name(plan.max_length)
    copied: dict[str, Any] = {"null_embed": None, "validation_prompts": []}
    if fs.exists(f"{root}/embeddings/{null_name}"):
        target = plan.dest / "output" / "pretrained_models" / null_name
        copied["null_embed"] = _copy_out(fs, f"{root}/embeddings/{null_name}", target)
    for source in sorted(fs.glob(f"{root}/embeddings/tmp/*_{plan.max_length}token.pth")):
        target = plan.dest / "output" / "tmp" / source.rsplit("/", 1)[-1]
        copied["validation_prompts"].append(_copy_out(fs, source, target))
    return copied


# ---------------------------------------------------------------------------------------------------------
# The export.


class _ShardExporter:
    """Streams shards into the export, a bounded number of samples in flight in a thread pool."""

    def __init__(
        self, plan: ExportPlan, dataset: tuple[AbstractFileSystem, str], second: SecondCaptionWriter, workers: int
    ) -> None:
        self.plan, self.dataset, self.second = plan, dataset, second
        self.num_workers = max(1, workers)
        self.stats: Counter = Counter()
        self.entries: list[dict[str, Any]] = []
        self.seen: set[str] = set()

    def run(self, shards: list[str]) -> None:
        with ThreadPoolExecutor(self.num_workers) as pool:
            for shard in shards:
                self._export_shard(shard, pool)
        self.stats["exported"] = len(self.entries)
        self.stats["second_caption_features"] = self.second.written

    def _export_shard(self, shard: str, pool: ThreadPoolExecutor) -> None:
        pending: deque[Future] = deque()
        for key, files in iter_shard(*self.dataset, shard):
            sample = self._prepare(key, files)
            if sample is None:
                continue
            self.entries.append(sample.entry)
            self.second.add(key, sample.second_caption)
            pending.append(pool.submit(write_sample, self.plan, sample))
            while len(pending) > 4 * self.num_workers:  # bounds the samples held in memory
                pending.popleft().result()
        while pending:
            pending.popleft().result()
        self.second.flush()

    def _prepare(self, key: str, files: dict[str, bytes]) -> PreparedSample | None:
        if key in self.seen:
            self.stats["skipped_duplicate_key"] += 1
            return None
        sample = prepare_sample(self.plan, key, files, self.stats)
        if sample is not None:
            self.seen.add(key)
            self.stats["second_caption"] += sample.second_caption is not None
        return sample


def write_data_info(plan: ExportPlan, entries: list[dict[str, Any]], seed: int) -> list[str]:
    """Shuffled, not sorted by ratio: PixArt builds its bucket statistics from the first third only (§3c)."""
    shuffled = sorted(entries, key=lambda entry: entry["path"])
    random.Random(seed).shuffle(shuffled)
    paths = []
    for folder in plan.layout.json_dirs:
        path = plan.data_dir / folder / JSON_NAME
        path.write_text(json.dumps(shuffled))  # ASCII escapes: PixArt opens it with the locale's encoding
        paths.append(str(path))
    return paths


def _real_prompt_ratio(plan: ExportPlan, stats: Counter) -> float:
    # Σ's loader swaps in sharegpt4v features with probability 1 - ratio, so every sample needs them.
    complete = 0 < stats["exported"] == stats["second_caption_features"]
    return 0.5 if plan.flavor == "sigma" and complete else 1.0


def pixart_config(plan: ExportPlan, real_prompt_ratio: float) -> dict[str, Any]:
    """The PixArt config keys to set for this export (reference §7)."""
    data = {"type": plan.layout.dataset_class, "root": "InternData", "image_list_json": [JSON_NAME]}
    return {
        "data_root": str(plan.dest),
        "data": {**data, "load_vae_feat": True, "load_t5_feat": True},
        "image_size": plan.resolution,
        "multi_scale": not plan.single_scale,
        "aspect_ratio_type": None if plan.single_scale else f"ASPECT_RATIO_{plan.resolution}",
        "scale_factor": plan.scale_factor,
        "model_max_length": plan.max_length,
        "real_prompt_ratio": real_prompt_ratio,
    }


def _notes(plan: ExportPlan, stats: Counter, embeddings: dict[str, Any]) -> list[str]:
    notes = [
        f"Run PixArt's train scripts from {plan.dest} (or copy its output/ folder into your PixArt working "
        "directory): they read output/pretrained_models/ and output/tmp/ relative to the working directory."
    ]
    if embeddings["null_embed"] is None:
        notes.append(
            f"No embeddings/{null_embed_name(plan.max_length)} in the dataset: run `curate embed-prompts` "
            "first (PixArt-Σ's load_checkpoint needs the file whenever it loads a checkpoint)."
        )
    if plan.single_scale:
        notes.append(f"Single-scale: {stats['skipped_not_square']} samples outside the square bucket were skipped.")
    if plan.flavor == "sigma" and _real_prompt_ratio(plan, stats) == 1.0:
        notes.append(f"Set real_prompt_ratio=1.0 (Σ configs default to 0.5): {_second_caption_gap(plan, stats)}.")
    if plan.flavor == "alpha":
        notes.append(
            "Train with the PixArt-alpha repo's train.py: the sigma repo's loop does not read alpha "
            "T5 features (§8.14)."
        )
    if stats["skipped_inconsistent"]:
        notes.append(
            f"{stats['skipped_inconsistent']} samples skipped: image size, bucket and latent shape "
            "disagree (run `curate verify`)."
        )
    return notes


def _second_caption_gap(plan: ExportPlan, stats: Counter) -> str:
    if plan.layout.second_caption_dir is None:
        return "no extra_features encoder was given, so sharegpt4v_caption_features_new/ was not written"
    return f"only {stats['second_caption_features']} of {stats['exported']} samples have second-caption features"


def export_pixart(
    dataset: str,
    dest: str | Path,
    flavor: str,
    resolution: int | None = None,
    single_scale: bool = False,
    seed: int = 0,
    extra_features: dict[str, Encoder] | None = None,
    *,
    num_workers: int = 4,
) -> dict[str, Any]:
    """Export ``dataset`` (local path or fsspec URL) to ``dest`` for PixArt-``flavor``; returns the summary.

    ``extra_features`` maps a caption name (e.g. "alt") to ``texts -> [array[real_tokens, D]]``, a T5 encoder
    for second captions (Σ's ``sharegpt4v``); the arrays hold real tokens only, like ``KEY.t5.npy``.
    """
    fs, root = filesystem(dataset)
    plan = plan_export(read_manifest(fs, root), dest, flavor, resolution, single_scale)
    if not extra_features:  # nothing can encode second captions: no sharegpt4v feature folder
        plan = replace(plan, layout=replace(plan.layout, second_caption_dir=None))
    for folder in plan.folders():
        folder.mkdir(parents=True, exist_ok=True)
    exporter = _ShardExporter(plan, (fs, root), SecondCaptionWriter(plan, extra_features), num_workers)
    exporter.run(sorted(read_index(dataset, ["shard"]).column("shard").unique().to_pylist()))  # indexed = complete
    json_paths = write_data_info(plan, exporter.entries, seed)
    embeddings = copy_embeddings(fs, root, plan)
    summary = _summary(plan, exporter.stats, embeddings, json_paths)
    (plan.dest / "export_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(plan: ExportPlan, stats: Counter, embeddings: dict[str, Any], json_paths: list[str]) -> dict[str, Any]:
    counts = {name: stats[name] for name in COUNTS}
    return {
        "flavor": plan.flavor,
        "max_length": plan.max_length,
        "resolution": plan.resolution,
        "single_scale": plan.single_scale,
        "dest": str(plan.dest),
        "counts": counts,
        "folders": [str(folder) for folder in plan.folders()],
        "data_info": json_paths,
        "embeddings": embeddings,
        "pixart_config": pixart_config(plan, _real_prompt_ratio(plan, stats)),
        "notes": _notes(plan, stats, embeddings),
    }
