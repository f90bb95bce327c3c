"""A small curated dataset in the CONTRACT.md format, written from scratch for the PixArt tests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.buckets import aspect_ratio_table
from curation.io.layout import npy_bytes

FEATURE_DIM = 16
BASE_SIZE = 256
TOKENS = {"alpha": 120, "sigma": 300}
# (height, width, image format): exact bucket sizes of the 256 table, plus two that only round to one.
SHAPES = [
    (256, 256, "jpg"),
    (192, 320, "png"),
    (352, 176, "webp"),
    (250, 250, "jpg"),
    (256, 256, "png"),
    (190, 318, "jpg"),
]
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


# Caption formats: "legacy" (built before per-caption T5 features: caption_status a string, only KEY.t5.npy),
# "dense" (per-caption maps, dense only: the α recipes) and "dense_short" (+ short and KEY.t5.short.npy: Σ).
CAPTION_FORMATS = ("legacy", "dense", "dense_short")


@dataclass
class StoredSample:
    key: str
    shard: str
    height: int
    width: int
    bucket: str
    captions: dict[str, str]
    t5: np.ndarray
    vae: np.ndarray
    t5_extra: dict[str, np.ndarray] = field(default_factory=dict)  # KEY.t5.<name>.npy


@dataclass(frozen=True)
class CaptionOptions:
    caption_format: str = "legacy"
    second_every: int = 2  # every k-th sample has alt text (0: none)
    short_missing_every: int = 0  # dense_short: every k-th sample's short caption came out empty (0: none)
    alt_features: bool = False  # per-caption formats: the build also encoded the alt text (KEY.t5.alt.npy)


def _bucket(height: int, width: int) -> tuple[str, tuple[int, int]]:
    table = aspect_ratio_table(BASE_SIZE)
    key = min(table, key=lambda ratio: abs(float(ratio) - height / width))
    return key, table[key]


def _image_bytes(rng: np.random.Generator, height: int, width: int, ext: str) -> bytes:
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=_PIL_FORMATS[ext])
    return out.getvalue()


def _features(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((int(rng.integers(3, 20)), FEATURE_DIM)).astype(np.float16)


def _captions(rng, key: str, index: int, options: CaptionOptions) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Captions, extra T5 features and the caption fields of KEY.json for one sample."""
    captions = {"dense": f"a dense caption of sample {key}"}
    extra: dict[str, np.ndarray] = {}
    if options.caption_format == "dense_short":
        missing = options.short_missing_every and index % options.short_missing_every == 0
        if not missing:
            captions["short"] = f"short {key}"
            extra["short"] = _features(rng)
    if options.second_every and index % options.second_every == 0:
        captions["alt"] = f"alt text {key}"
        if options.alt_features and options.caption_format != "legacy":
            extra["alt"] = _features(rng)
    if options.caption_format == "legacy":
        return captions, extra, {"caption_status": "ok"}
    generated = ["dense", "short"] if options.caption_format == "dense_short" else ["dense"]
    fields = {
        "caption_status": {name: "ok" if name in captions else "empty" for name in generated},
        "caption_tokens": {name: len(captions.get(name, "").split()) for name in generated},
        "caption_flags": {name: [] for name in generated},
    }
    return captions, extra, fields


def _make_sample(rng, key, shard, index, std_scale, options) -> tuple[StoredSample, dict[str, bytes]]:
    height, width, ext = SHAPES[index % len(SHAPES)]
    bucket, (bucket_h, bucket_w) = _bucket(height, width)
    captions, extra, caption_fields = _captions(rng, key, index, options)
    t5 = _features(rng)
    mean = rng.standard_normal((4, bucket_h // 8, bucket_w // 8))
    std = np.abs(rng.standard_normal(mean.shape)) * std_scale + std_scale / 2 if std_scale else np.zeros_like(mean)
    vae = np.concatenate([mean, std]).astype(np.float16)
    image = _image_bytes(rng, height, width, ext)
    meta = {
        "key": key,
        "source": f"synthetic/{key}.{ext}",
        "width": width,
        "height": height,
        "bucket": bucket,
        "bucket_hw": [bucket_h, bucket_w],
        "captions": captions,
        **caption_fields,
        "t5_tokens": int(t5.shape[0]),
        "t5_truncated": False,
        "sha256": hashlib.sha256(image).hexdigest(),
        "phash": "0" * 16,
    }
    if options.caption_format != "legacy":
        meta["caption_t5_tokens"] = {"dense": int(t5.shape[0])} | {n: int(a.shape[0]) for n, a in extra.items()}
        meta["caption_t5_truncated"] = dict.fromkeys(meta["caption_t5_tokens"], False)
    files = {
        ext: image,
        "json": json.dumps(meta).encode(),
        "txt": captions["dense"].encode(),
        "t5.npy": npy_bytes(t5),
        "vae.npy": npy_bytes(vae),
    }
    files.update({f"t5.{name}.npy": npy_bytes(array) for name, array in extra.items()})
    return StoredSample(key, shard, height, width, bucket, captions, t5, vae, extra), files


def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _write_index(path: Path, samples: list[StoredSample]) -> None:
    rows = [
        {
            "key": s.key,
            "shard": s.shard,
            "width": s.width,
            "height": s.height,
            "bucket": s.bucket,
            "bucket_h": int(s.vae.shape[1] * 8),
            "bucket_w": int(s.vae.shape[2] * 8),
            "caption": s.captions["dense"],
            "t5_tokens": int(s.t5.shape[0]),
            "t5_truncated": False,
            "sha256": "",
            "phash": "",
            "source": "",
        }
        for s in samples
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


def build_dataset(
    root: Path,
    flavor: str = "sigma",
    shards: int = 3,
    per_shard: int = 6,
    std_scale: float = 0.5,
    seed: int = 0,
    t5_model: str | None = None,
    **caption_options,
) -> dict[str, StoredSample]:
    """Write manifest, shards and index; ``caption_options``: the fields of ``CaptionOptions``.

    ``t5_model`` records a T5 folder in the manifest (``config.t5.model.path``), for exports that encode.
    """
    options = CaptionOptions(**caption_options)
    assert options.caption_format in CAPTION_FORMATS
    rng = np.random.default_rng(seed)
    for folder in ("shards", "index"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    stored: dict[str, StoredSample] = {}
    for shard_index in range(shards):
        shard = f"{shard_index:05d}.tar"
        made = [
            _make_sample(rng, f"img_{shard_index}_{i:03d}", shard, shard_index * per_shard + i, std_scale, options)
            for i in range(per_shard)
        ]
        _write_tar(root / "shards" / shard, [(sample.key, files) for sample, files in made])
        _write_index(root / "index" / f"part-{shard_index:05d}.parquet", [sample for sample, _ in made])
        stored.update((sample.key, sample) for sample, _ in made)
    t5: dict = {"max_length": TOKENS[flavor]}
    if t5_model:
        t5.update(model={"path": t5_model}, caption_cleaning="none" if flavor == "sigma" else "alpha")
    config = {
        "flavor": flavor,
        "t5": t5,
        "vae": {"aspect_ratios": BASE_SIZE, "scale_factor": 0.13025 if flavor == "sigma" else 0.18215},
    }
    counts = {"input": len(stored), "written": len(stored), "rejected": 0, "failed": 0}
    (root / "manifest.json").write_text(json.dumps({"counts": counts, "config": config, "fingerprint": "test"}))
    return stored


@pytest.fixture
def make_dataset(tmp_path: Path):
    def factory(name: str = "dataset", **options) -> tuple[Path, dict[str, StoredSample]]:
        root = tmp_path / name
        return root, build_dataset(root, **options)

    return factory
