"""``curate verify --recompute F``: re-encode the features of a random share of samples and compare.

Structural checks cannot see features that belong to another sample (two samples of the same T5 token
count, or of the same bucket, with their ``.npy`` members swapped). Here, for a seeded random fraction of
the samples, the manifest's own models run again on CPU in float32, through the pipeline's stage classes:

- T5 (``T5Stage``): every ``KEY.t5*.npy`` against its stored caption (``t5.npy``: ``dense``,
  ``t5.NAME.npy``: ``NAME``), cleaned as the manifest's ``caption_cleaning`` says;
- VAE (``VAEStage``): ``KEY.vae.npy`` against the stored image prepared as the build prepared it: the
  filter's decode (``filter_image``, same reduced JPEG decode) and bucket crop (``bucket_crop``).

Tolerance: the largest absolute difference, divided by the largest magnitude of the re-encode.

- ``FP32_TOLERANCE`` (2e-3) for datasets whose model ran in float32 on CPU: the stored float16 is within
  half a float16 step (2^-11 = 4.9e-4 relative) of the build's float32, whose own difference from this
  float32 re-encode (batching and padding change the summation order) is ~1e-6; 2e-3 is 4 float16
  half-steps of the largest value.
- ``LOW_PRECISION_TOLERANCE`` (0.1) for anything else: bf16 carries 8 significant bits (2^-9 relative per
  operation) and its rounding accumulates over the encoder's layers; fp16, and float32 on GPUs (TF32
  convolutions) differ less. Differences of 1-5% of the largest value are expected there.

A sample's features swapped with another's differ by the order of the values themselves (~1 of the
largest value), far above either tolerance.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation.config import ModelRef, RunConfig, parse_config
from curation.io.layout import IMAGE_EXTS, SHARDS_DIR, filesystem, iter_tar_samples, load_npy, read_index, read_json
from curation.models.loading import provenance, stage_models

FP32_TOLERANCE = 2e-3
LOW_PRECISION_TOLERANCE = 0.1
# The filter rules that could refuse a stored image: off, so that only the decode itself is repeated.
_DECODE_ONLY = {
    "max_bytes": 2**62,
    "allowed_formats": None,
    "max_pixels": 2**62,
    "min_side": 1,
    "min_pixels": 0,
    "max_aspect_ratio": math.inf,
    "max_transparent_fraction": 1.0,
    "min_gray_std": 0.0,
    "min_laplacian_var": 0.0,
    "grayscale_policy": "keep",
    "animated_policy": "first_frame",
}


def tolerance(model_record: dict[str, Any] | None) -> float:
    """The stated tolerance for features a model computed with the device and dtype the manifest records."""
    record = model_record or {}
    strict = record.get("device") == "cpu" and record.get("dtype") == "float32"
    return FP32_TOLERANCE if strict else LOW_PRECISION_TOLERANCE


def relative_error(stored: np.ndarray, recomputed: np.ndarray) -> float:
    """max |stored - recomputed| / max |recomputed| (inf for different shapes)."""
    if stored.shape != recomputed.shape:
        return math.inf
    expected = recomputed.astype(np.float32)
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    return float(np.abs(stored.astype(np.float32) - expected).max(initial=0.0)) / scale


def pick_samples(keys: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` of the keys (at least one when ``fraction`` > 0)."""
    if fraction <= 0 or not keys:
        return []
    count = min(len(keys), max(1, math.ceil(fraction * len(keys))))
    return sorted(random.Random(seed).sample(sorted(keys), count))


@dataclass
class Sample:
    key: str
    meta: dict[str, Any]
    members: dict[str, bytes]
    problems: list[str] = field(default_factory=list)


class Recomputer:
    """The manifest's T5 and VAE, on CPU in float32, and what the build did before them."""

    def __init__(self, config: RunConfig, models: dict[str, Any], caption_cleaning: str) -> None:
        from curation.stages.t5 import T5Stage
        from curation.stages.vae import VAEStage
        from pipelines.t2i import prepare_spec

        self.t5 = T5Stage(config.t5.model_copy(update={"model": _on_cpu(config.t5.model)}))
        self.vae = VAEStage(config.vae.model_copy(update={"model": _on_cpu(config.vae.model)}))
        self.caption_cleaning = caption_cleaning
        self.filter_config = config.filter.model_copy(update=_DECODE_ONLY)
        self.spec = prepare_spec(config)
        self.t5_tolerance = tolerance(models.get("t5"))
        self.vae_tolerance = tolerance(models.get("vae"))

    def check(self, samples: list[Sample]) -> None:
        """Compare every sample's stored features with a re-encode; problems go to each sample."""
        self._check_t5(samples)
        self._check_vae(samples)

    def _check_t5(self, samples: list[Sample]) -> None:
        from curation.text import prepare_t5_text

        jobs: list[tuple[Sample, str, str]] = []
        for sample in samples:
            captions = sample.meta.get("captions") or {}
            for member in sorted(m for m in sample.members if m.startswith("t5.") and m.endswith(".npy")):
                name = "dense" if member == "t5.npy" else member.removeprefix("t5.").removesuffix(".npy")
                if not isinstance(captions.get(name), str):
                    sample.problems.append(f"{sample.key}.{member}: no caption {name!r} to re-encode")
                    continue
                jobs.append((sample, member, prepare_t5_text(captions[name], self.caption_cleaning)))
        encoded = self.t5.encode([text for _, _, text in jobs], dtype=np.float32)
        for (sample, member, _), (features, _, _) in zip(jobs, encoded, strict=True):
            self._compare(sample, member, features, self.t5_tolerance, "its caption")

    def _check_vae(self, samples: list[Sample]) -> None:
        by_bucket: dict[tuple[int, int], list[tuple[Sample, np.ndarray]]] = defaultdict(list)
        for sample in samples:
            pixels = self._bucket_pixels(sample)
            if pixels is not None:
                by_bucket[tuple(pixels.shape[:2])].append((sample, pixels))
        for group in by_bucket.values():
            moments = self.vae.encode_uint8(np.stack([pixels for _, pixels in group]))
            for (sample, _), recomputed in zip(group, moments, strict=True):
                self._compare(sample, "vae.npy", recomputed, self.vae_tolerance, "its image")

    def _bucket_pixels(self, sample: Sample) -> np.ndarray | None:
        """The build's VAE input: the filter's decode of the stored image, cropped to the sample's bucket."""
        from curation.stages.filter import Rejection, filter_image
        from curation.stages.prepare import bucket_crop

        images = [ext for ext in IMAGE_EXTS if ext in sample.members]
        if not images:
            sample.problems.append(f"{sample.key}: no image to re-encode")
            return None
        try:
            decoded = filter_image(sample.members[images[0]], self.filter_config, self.spec.decode_size)
        except Rejection as rejection:
            sample.problems.append(f"{sample.key}.{images[0]}: cannot be prepared again ({rejection.reason})")
            return None
        bucket_hw = tuple(sample.meta["bucket_hw"])
        return bucket_crop(decoded.image, bucket_hw, self.spec.interpolation)

    @staticmethod
    def _compare(sample: Sample, member: str, recomputed: np.ndarray, limit: float, what: str) -> None:
        try:
            stored = load_npy(sample.members[member])
        except Exception as error:
            sample.problems.append(f"{sample.key}.{member}: unreadable ({error})")
            return
        error = relative_error(stored, recomputed)
        if not error <= limit:
            found = f"{error:.3g} of its largest value" if math.isfinite(error) else f"shape {stored.shape}"
            sample.problems.append(
                f"{sample.key}.{member}: differs from a re-encode of {what} ({found}; tolerance {limit:g}, "
                f"re-encode {recomputed.shape})"
            )


def _on_cpu(ref: ModelRef) -> ModelRef:
    return ref.model_copy(update={"device": "cpu", "dtype": "float32"})


def changed_models(manifest: dict[str, Any], config: RunConfig) -> list[str]:
    """Models whose local weights are missing or differ from what the build recorded: no re-encode then."""
    models = stage_models(config)
    problems = []
    for name in ("t5", "vae"):  # what verify re-encodes
        ref, subfolders = models[name]
        recorded = (manifest.get("models") or {}).get(name) or {}
        if "weights_sha256_sampled" not in recorded:
            continue  # a hub model: its revision is what from_pretrained loads
        if not Path(ref.path).expanduser().exists():
            problems.append(f"models.{name}: {ref.path} not found here (run verify where the build ran)")
            continue
        now = provenance(ref, subfolders).get("weights_sha256_sampled")
        if now != recorded["weights_sha256_sampled"]:
            problems.append(
                f"models.{name}: the weights at {ref.path} changed since the build "
                f"({recorded['weights_sha256_sampled']} -> {now}): cannot re-encode"
            )
    return problems


def _read_samples(fs, root: str, shard: str, keys: set[str]) -> list[Sample]:
    samples = []
    with fs.open(f"{root}/{SHARDS_DIR}/{shard}", "rb") as file:
        for key, members in iter_tar_samples(file):
            if key in keys:
                samples.append(Sample(key, json.loads(members.get("json") or b"{}"), members))
    return samples


def recompute_problems(path: str, fraction: float, seed: int = 0) -> list[str]:
    """Problems of the re-encode of a seeded random ``fraction`` of the samples (empty: all within tolerance)."""
    fs, root = filesystem(path)
    manifest = read_json(fs, f"{root}/manifest.json")
    if manifest is None or "config" not in manifest:
        return ["recompute: no manifest with the build's config"]
    index = read_index(path, ["key", "shard"]).to_pydict()
    shard_of = dict(zip(index["key"], index["shard"], strict=True))
    chosen = pick_samples(list(shard_of), fraction, seed)
    if not chosen:
        return []
    config = parse_config(manifest["config"])
    problems = changed_models(manifest, config)
    if problems:
        return problems
    recomputer = Recomputer(config, manifest.get("models") or {}, manifest.get("caption_cleaning") or "none")
    by_shard: dict[str, set[str]] = defaultdict(set)
    for key in chosen:
        by_shard[shard_of[key]].add(key)
    differing = []
    for shard in sorted(by_shard):
        samples = _read_samples(fs, root, shard, by_shard[shard])
        recomputer.check(samples)
        for sample in samples:
            problems += [f"{shard}: {problem}" for problem in sample.problems]
            differing += [sample.key] if sample.problems else []
    if differing:
        keys = ", ".join(sorted(differing))
        problems.append(f"recompute: {len(differing)} of {len(chosen)} samples differ from a re-encode: {keys}")
    return problems


__all__ = ["FP32_TOLERANCE", "LOW_PRECISION_TOLERANCE", "recompute_problems", "tolerance"]
