"""``curate export pixart``: write a curated dataset in the exact layout PixArt's own dataset classes read.

The folders come from the loaders, not from PixArt's extractors, which disagree with them (reference
pixart_formats.md §0, §3b, §8). Every image gets a flat name ``KEY.png``, so each loader's name rule
(``dir_stem``, basename, ``.png`` swap) finds the same feature files.

Under ``DEST/InternData/`` (JSON folder; T5 ``.npz`` folders; VAE ``.npy`` folder):

* α multi-scale, ``InternalDataMS`` of A (``partition_filter/``) and of S (root): ``caption_feature_wmask/``
  (A) and ``caption_features/`` (S); ``img_vae_fatures_{res}_multiscale/ms/`` (PixArt's typo).
* α single-scale, ``InternalData`` (A and S): ``partition/``; ``caption_feature_wmask/``;
  ``img_vae_features_{res}resolution/noflip/``.
* Σ multi-scale, ``InternalDataMSSigma``: root; ``caption_features_new/`` (T5 of ``prompt``) and
  ``sharegpt4v_caption_features_new/`` (T5 of ``sharegpt4v``); ``img_sdxl_vae_features_{res}resolution_ms_new/``.
* Σ single-scale, ``InternalDataSigma``: root; same T5 folders; ``img_sdxl_vae_features_{res}resolution_new/``.

Which caption fills ``prompt`` and ``sharegpt4v``: export_captions.py. Under ``DEST/output/``: the null
embedding and validation-prompt embeddings, from ``DATASET/embeddings/`` (computed there first with the
dataset's T5 when ``compute_embeddings`` and the dataset has none).

Shards are streamed one at a time; only the small JSON entries are held for the final shuffle.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image

from curation.buckets import bucket_for
from curation.io.layout import IMAGE_EXTS, filesystem, load_npy, read_index, read_manifest
from curation.pixart.embed_files import EMBEDDINGS_DIR, copy_embeddings, has_embeddings
from curation.pixart.export_captions import (
    PROMPT,
    SHAREGPT4V,
    CaptionSource,
    Encoder,
    ExportEncoder,
    choose_captions,
    stored_features,
)
from curation.pixart.export_summary import JSON_NAME, build_summary
from curation.pixart.layout import ExportPlan, plan_export
from curation.pixart.loader import iter_shard, pad_tokens
from curation.terminal import progress

# PNG stores these modes as they are; anything else (CMYK, YCbCr, …) is converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


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
    path.unlink(missing_ok=True)  # a re-export must not write through a hard link of the previous one
    np.savez_compressed(
        path,
        caption_feature=padded[None].astype(plan.layout.feature_dtype),
        attention_mask=mask[None].astype(plan.layout.mask_dtype),
    )


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)  # the same npz in two folders: no second copy on disk
    except OSError:
        shutil.copyfile(source, target)


def write_features(plan: ExportPlan, key: str, features: dict[str, np.ndarray]) -> None:
    """The npz of each text field in every folder its loaders read; one array used twice is written once."""
    written: dict[int, Path] = {}
    for field, array in features.items():
        for path in plan.feature_paths(field, key):
            if id(array) in written:
                _link_or_copy(written[id(array)], path)
            else:
                write_caption_npz(plan, path, array)
                written[id(array)] = path


@dataclass
class PreparedSample:
    key: str
    entry: dict[str, Any]
    image: bytes
    image_ext: str
    vae: np.ndarray
    features: dict[str, np.ndarray]  # text field (prompt / sharegpt4v) → stored real-token T5 features
    to_encode: list[tuple[str, CaptionSource]]  # (text field, caption) without stored features


def write_sample(plan: ExportPlan, sample: PreparedSample) -> None:
    (plan.image_dir / f"{sample.key}.png").write_bytes(png_bytes(sample.image, sample.image_ext))
    write_features(plan, sample.key, sample.features)
    np.save(plan.vae_path(sample.key), sample.vae.astype(plan.layout.vae_dtype, copy=False))


def _skip_reason(plan: ExportPlan, meta: dict[str, Any], height: int, width: int, vae_shape: tuple) -> str | None:
    """Why a sample cannot be exported: PixArt picks the bucket from the JSON size, so it must give the latent."""
    bucket, (bucket_h, bucket_w) = bucket_for(height, width, plan.resolution)
    if bucket != meta.get("bucket") or tuple(vae_shape) != (8, bucket_h // 8, bucket_w // 8):
        return "skipped_inconsistent"
    if plan.single_scale and bucket != "1.0":
        return "skipped_not_square"
    return None


def prepare_sample(
    plan: ExportPlan, key: str, files: dict[str, bytes], stats: Counter, prompt_caption: str
) -> PreparedSample | None:
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
    captions = choose_captions(plan.flavor, meta, files, prompt_caption)
    entry = {"path": f"{key}.png", "prompt": captions.prompt.text, "height": height, "width": width}
    entry["ratio"] = height / width
    if plan.flavor == "sigma":
        entry[SHAREGPT4V] = captions.sharegpt4v.text if captions.sharegpt4v else ""
    if captions.outcome:
        stats[captions.outcome] += 1
    features, to_encode = stored_features(captions, files, load_npy)
    return PreparedSample(key, entry, files[image_ext], image_ext, vae, features, to_encode)


# ---------------------------------------------------------------------------------------------------------
# The export.


@dataclass(frozen=True)
class ExportOptions:
    prompt_caption: str = "short"
    legacy_second_captions: bool = True
    num_workers: int = 4


class _ShardExporter:
    """Streams shards into the export, a bounded number of samples in flight in a thread pool."""

    def __init__(
        self,
        plan: ExportPlan,
        dataset: tuple[AbstractFileSystem, str],
        encoder: ExportEncoder,
        options: ExportOptions,
    ) -> None:
        self.plan, self.dataset, self.encoder, self.options = plan, dataset, encoder, options
        self.num_workers = max(1, options.num_workers)
        self.stats: Counter = Counter()
        self.entries: list[dict[str, Any]] = []
        self.seen: set[str] = set()

    def run(self, shards: list[str]) -> None:
        with ThreadPoolExecutor(self.num_workers) as pool:
            for shard in progress(shards, desc="export", unit="shard"):
                self._export_shard(shard, pool)
        self.stats["exported"] = len(self.entries)
        self.stats["sharegpt4v_features"] += self.encoder.written[SHAREGPT4V]
        self.stats["t5_encoded_at_export"] = self.encoder.encoded

    def _export_shard(self, shard: str, pool: ThreadPoolExecutor) -> None:
        pending: deque[Future] = deque()
        for key, files in iter_shard(*self.dataset, shard):
            sample = self._prepare(key, files)
            if sample is None:
                continue
            self.entries.append(sample.entry)
            pending.append(pool.submit(write_sample, self.plan, sample))
            while len(pending) > 4 * self.num_workers:  # bounds the samples held in memory
                pending.popleft().result()
        while pending:
            pending.popleft().result()
        self.encoder.flush()

    def _prepare(self, key: str, files: dict[str, bytes]) -> PreparedSample | None:
        if key in self.seen:
            self.stats["skipped_duplicate_key"] += 1
            return None
        sample = prepare_sample(self.plan, key, files, self.stats, self.options.prompt_caption)
        if sample is None:
            return None
        self.seen.add(key)
        self.stats["sharegpt4v_caption"] += bool(sample.entry.get(SHAREGPT4V))
        self.stats["sharegpt4v_features"] += SHAREGPT4V in sample.features
        for field, source in sample.to_encode:
            self._queue_encode(key, field, source)
        return sample

    def _queue_encode(self, key: str, field: str, source: CaptionSource) -> None:
        if field == SHAREGPT4V and not self.options.legacy_second_captions:
            return
        if self.encoder.can_encode(source.name):
            self.encoder.add(key, field, source)
        elif field == PROMPT:  # an entry without its prompt's features is unreadable: refuse, never guess
            raise ValueError(f"{key}: caption {source.name!r} has no stored T5 features and no encoder was given")


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


def _find_embeddings(dataset: str, plan: ExportPlan, compute: bool, t5_model: str | None, scratch: str) -> dict:
    """Where the null and validation embeddings are: ``folder`` (an fsspec URL) and ``source``.

    ``source``: "dataset" (cached in ``DATASET/embeddings``), "computed" (now, with the dataset's T5, then
    cached there, or in ``scratch`` for this export only when the dataset is read-only) or None (none).
    """
    folder = f"{dataset.rstrip('/')}/{EMBEDDINGS_DIR}"
    if has_embeddings(*filesystem(folder), plan.max_length):
        return {"source": "dataset", "not_cached": None, "folder": folder}
    if not compute:
        return {"source": None, "not_cached": None, "folder": folder}
    from curation.pixart.embed import cache_prompt_embeddings  # loads T5: only when the dataset has none

    written = cache_prompt_embeddings(dataset, t5_model, fallback=scratch)
    return {"source": "computed", "folder": written["folder"], "not_cached": written.get("not_written_to")}


def _export_embeddings(dataset: str, plan: ExportPlan, compute: bool, t5_model: str | None) -> dict[str, Any]:
    """The embeddings copied to ``DEST/output/``: what was copied, ``source`` and ``not_cached``."""
    with tempfile.TemporaryDirectory(prefix="pixart-embeddings-") as scratch:
        found = _find_embeddings(dataset, plan, compute, t5_model, scratch)
        copied = copy_embeddings(*filesystem(found.pop("folder")), plan.dest, plan.max_length)
    return {**copied, **found}


def export_pixart(
    dataset: str,
    dest: str | Path,
    flavor: str,
    resolution: int | None = None,
    single_scale: bool = False,
    seed: int = 0,
    extra_features: dict[str, Encoder] | None = None,
    *,
    prompt_caption: str = "short",
    legacy_second_captions: bool = True,
    compute_embeddings: bool = False,
    t5_model: str | None = None,
    num_workers: int = 4,
) -> dict[str, Any]:
    """Export ``dataset`` (local path or fsspec URL) to ``dest`` for PixArt-``flavor``; returns the summary.

    ``extra_features`` maps a caption name (e.g. "alt") to ``texts -> [array[real_tokens, D]]``, a T5 encoder
    for captions without stored features (real tokens only, like ``KEY.t5.npy``); it is called only for
    those. ``prompt_caption``: the caption Σ's ``prompt`` takes (default ``short``). ``legacy_second_captions``:
    encode the alt text of datasets built before per-caption features as their ``sharegpt4v``.
    ``compute_embeddings``: when the dataset has no null / validation embeddings, compute them with its T5
    (``t5_model`` overrides the manifest's path) and cache them in ``DATASET/embeddings/``.
    """
    fs, root = filesystem(dataset)
    plan = plan_export(read_manifest(fs, root), dest, flavor, resolution, single_scale)
    embeddings = _export_embeddings(dataset, plan, compute_embeddings, t5_model)  # fails before the long part
    for folder in plan.folders():
        folder.mkdir(parents=True, exist_ok=True)
    options = ExportOptions(prompt_caption, legacy_second_captions, num_workers)

    def write_encoded(key: str, field: str, features: np.ndarray) -> None:
        write_features(plan, key, {field: features})

    exporter = _ShardExporter(plan, (fs, root), ExportEncoder(extra_features, write_encoded), options)
    exporter.run(sorted(read_index(dataset, ["shard"]).column("shard").unique().to_pylist()))  # indexed = complete
    json_paths = write_data_info(plan, exporter.entries, seed)
    summary = build_summary(plan, exporter.stats, embeddings, json_paths, options.prompt_caption)
    (plan.dest / "export_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_command(args: argparse.Namespace) -> int:
    """``curate export pixart``: one command, a folder PixArt's train scripts read as it is."""
    from curation.pixart.embed import second_caption_encoders

    encoders = None
    if args.flavor == "sigma":  # lazy: T5 loads only for a caption without stored features
        encoders = second_caption_encoders(args.dataset, ("alt", args.prompt_caption), args.t5_model)
    summary = export_pixart(
        args.dataset,
        args.dest,
        args.flavor,
        resolution=args.resolution,
        single_scale=args.single_scale,
        seed=args.seed,
        extra_features=encoders,
        prompt_caption=args.prompt_caption,
        legacy_second_captions=not args.no_second_captions,
        compute_embeddings=not args.skip_embeddings,
        t5_model=args.t5_model,
    )
    print(json.dumps(summary, indent=2))
    return 0
