"""Large-JPEG preparation: where the decode happens and what it costs.

- ``decode_resize_vs_naive``: one large camera JPEG to its uint8 bucket crop: naive PIL (full decode, RGB,
  resize to cover, centre crop) vs the filter's decode (JPEG draft kept >= 2x every prepared size) +
  ``bucket_crop``. Wall seconds per image.
- ``gpu_actor_cpu_ms_per_image``: CPU milliseconds the caption and VAE actors spend per 12 MP JPEG before their
  models run: the path before the prepare step (each actor decoding the original; the functions of
  ``git show HEAD~3:curation/stages/{vae,caption}.py`` reproduced below) vs the stages now, which receive
  prepared pixels. The model forward and the caption processor's own resize/normalise (the same on both
  sides, on the same shrunk image) are excluded on both sides.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks.common import alternate, comparison
from benchmarks.inputs import CAMERA_NOISE, CAMERA_QUALITY, camera_jpeg
from curation.config import CaptionConfig, FilterConfig, ModelRef, VAEConfig
from curation.records import Row, new_row
from curation.stages.caption import CaptionStage
from curation.stages.filter import FilterStage, filter_image
from curation.stages.prepare import INTERPOLATIONS, PrepareSpec, bucket_crop, center_crop_box, cover_size
from curation.stages.vae import VAEStage

MP12 = (4032, 3024)
MP24 = (6000, 4000)
BASE_SIZE = 1024  # the 1024 aspect-ratio table of the PixArt 1024 presets
CAPTION_SIDE = 1024  # caption.max_image_side default
PSNR_MIN_DB = 45.0  # the draft decode's acceptance bound against the full-decode path


# ---------------------------------------------------------------- decode + bucket resize
def naive_bucket(data: bytes, spec: PrepareSpec) -> np.ndarray:
    """The straightforward PIL way: full decode, RGB, bicubic resize to cover the bucket, centre crop."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    _, bucket = spec.bucket(image.height, image.width)
    height, width = cover_size(image.height, image.width, bucket)
    resized = image.resize((width, height), INTERPOLATIONS[spec.interpolation])
    return np.asarray(resized.crop(center_crop_box(height, width, bucket)), dtype=np.uint8)


def our_bucket(data: bytes, spec: PrepareSpec, config: FilterConfig) -> np.ndarray:
    """The filter stage's decode (draft sized by the whole ``PrepareSpec``) and its ``bucket_crop``."""
    filtered = filter_image(data, config, spec.decode_size)
    width, height = filtered.size
    return bucket_crop(filtered.image, spec.bucket(height, width)[1], spec.interpolation)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else min(99.0, 10 * np.log10(255.0**2 / mse))  # 99: identical (JSON has no inf)


def _decode_side_by_side(images: list[bytes], spec: PrepareSpec, repeats: int) -> dict:
    config = FilterConfig()
    sides = {
        "naive": lambda: [naive_bucket(data, spec) for data in images],
        "ours": lambda: [our_bucket(data, spec, config) for data in images],
    }
    seconds, runs, outputs = alternate(sides, repeats)
    shapes_match = all(a.shape == b.shape for a, b in zip(outputs["naive"], outputs["ours"], strict=True))
    worst = min(psnr(a, b) for a, b in zip(outputs["naive"], outputs["ours"], strict=True)) if shapes_match else 0.0
    return {
        "per_image_s": {name: s / len(images) for name, s in seconds.items()},
        "runs": runs,
        "min_psnr_db": round(worst, 2),
        "equivalent": shapes_match and worst >= PSNR_MIN_DB,
        "bucket": list(outputs["ours"][0].shape[:2]),
        "jpeg_mb": round(float(np.mean([len(d) for d in images])) / 2**20, 2),
    }


def bench_decode(images: int, repeats: int, quick: bool = False) -> dict:
    """``decode_resize_vs_naive`` on 24 MP camera JPEGs; the 12 MP figures go into the note."""
    spec = PrepareSpec(base_size=BASE_SIZE, caption_max_side=CAPTION_SIDE)
    big_size, small_size = ((1500, 1000), (1008, 756)) if quick else (MP24, MP12)
    big = _decode_side_by_side([camera_jpeg(10 + i, big_size) for i in range(images)], spec, repeats)
    small = _decode_side_by_side([camera_jpeg(20 + i, small_size) for i in range(images)], spec, repeats)
    mp = lambda size: f"{size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} MP)"  # noqa: E731
    return comparison(
        "decode_resize_vs_naive",
        "s",
        big["per_image_s"]["naive"],
        big["per_image_s"]["ours"],
        target=1.6,
        equivalent=big["equivalent"] and small["equivalent"],
        note=(
            f"CPU seconds (process time; Pillow decodes and resizes on one thread) per image, {images} distinct "
            f"camera-like JPEGs {mp(big_size)}, quality {CAMERA_QUALITY}, mean "
            f"{big['jpeg_mb']} MiB (mosaics of the photos in examples/images upscaled x4 plus Gaussian noise sigma "
            f"{CAMERA_NOISE:g}) to their bucket "
            f"{big['bucket'][0]}x{big['bucket'][1]} of the {BASE_SIZE} table. Naive: Image.open + convert RGB + "
            f"bicubic resize to cover + centre crop. Ours: filter_image (JPEG draft, reduced decode >= 2x the cover "
            f"size and the {CAPTION_SIDE}-px caption view) + bucket_crop. Same pixels: min PSNR "
            f"{big['min_psnr_db']} dB (>= {PSNR_MIN_DB:g} required). At {mp(small_size)} ({small['jpeg_mb']} MiB) "
            f"no DCT reduction keeps 2x the cover size, so draft does not apply: naive "
            f"{small['per_image_s']['naive'] * 1000:.0f} ms vs ours {small['per_image_s']['ours'] * 1000:.0f} ms, "
            f"ratio {small['per_image_s']['naive'] / small['per_image_s']['ours']:.2f}, min PSNR "
            f"{small['min_psnr_db']} dB."
        ),
        size_24mp=big,
        size_12mp=small,
    )


# ---------------------------------------------------------------- CPU work inside the GPU actors
def old_decode_upright(row: Row) -> Image.Image:
    """HEAD~3 vae.decode_upright: the stored image, EXIF orientation applied, checked against the row."""
    with Image.open(io.BytesIO(row["image"])) as encoded:
        image = ImageOps.exif_transpose(encoded)
        image.load()
    if (image.width, image.height) != (row["width"], row["height"]):
        raise ValueError(f"decoded image is {image.width}x{image.height}, row says {row['width']}x{row['height']}")
    return image


def old_bucket_pixels(image: Image.Image, bucket_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """HEAD~3 vae.bucket_pixels: RGB, resize to cover, centre crop, ToTensor, Normalize([.5], [.5])."""
    image = image.convert("RGB")
    resized_h, resized_w = cover_size(image.height, image.width, bucket_hw)
    image = image.resize((resized_w, resized_h), INTERPOLATIONS[interpolation])
    image = image.crop(center_crop_box(resized_h, resized_w, bucket_hw))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5)


def old_caption_image(data: bytes, max_side: int) -> Image.Image:
    """HEAD~3 caption.decode_image: JPEG draft to the shrunk size, RGB, Lanczos thumbnail."""
    image = Image.open(io.BytesIO(data))
    scale = min(1.0, max_side / max(image.size))
    target = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    if image.format == "JPEG":
        image.draft("RGB", target)
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def old_actors(rows: list[Row], interpolation: str, max_side: int) -> list:
    """Both actors' pre-model work per row, as before the prepare step (one image per batch: no stacking gain)."""
    out = []
    for row in rows:
        bucket = (row["bucket_h"], row["bucket_w"])
        out.append(torch.stack([old_bucket_pixels(old_decode_upright(row), bucket, interpolation)]))
        out.append(old_caption_image(row["image"], max_side))
    return out


class VAEStageWithoutModel(VAEStage):
    """The real ``VAEStage`` code path with the encoder call replaced: everything the actor does but the model."""

    def _encode(self, pixels: torch.Tensor) -> np.ndarray:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        pixels = pixels.contiguous(memory_format=layout)
        return np.zeros((pixels.shape[0], 8, pixels.shape[2] // 8, pixels.shape[3] // 8), dtype=np.float16)


class CaptionStageWithoutModel(CaptionStage):
    """The real ``CaptionStage`` path up to the processor: prepared pixels to PIL images, batching, drop."""

    def _caption(self, rows: list[Row], images: list[Image.Image]) -> None:
        for row in rows:
            row["captions"] = '{"dense": "-"}'


def new_actors(rows: list[Row], vae: VAEStage, caption: CaptionStage) -> list[Row]:
    copies = [dict(row) for row in rows]
    vae.process_rows(copies)
    caption.process_rows(copies)
    return copies


def prepared_rows(images: list[bytes], spec: PrepareSpec) -> list[Row]:
    """Rows as the filter stage hands them on: original bytes plus prepared VAE and caption pixels."""
    stage = FilterStage(FilterConfig(), spec)
    rows = [new_row(f"cam{i:03d}", "benchmark", data) for i, data in enumerate(images)]
    stage.process_batch(rows)
    if any(row["status"] != "ok" for row in rows):
        raise RuntimeError(f"the filter rejected a benchmark image: {[row['detail'] for row in rows]}")
    return rows


def bench_actor_cpu(images: int, repeats: int, quick: bool = False) -> dict:
    """``gpu_actor_cpu_ms_per_image``: process CPU ms per 12 MP JPEG, one torch thread (as in a 1-CPU actor)."""
    size = (1008, 756) if quick else MP12
    spec = PrepareSpec(base_size=BASE_SIZE, caption_max_side=CAPTION_SIDE)
    rows = prepared_rows([camera_jpeg(30 + i, size) for i in range(images)], spec)
    unused = ModelRef(path="unused", device="cpu", dtype="float32")
    vae = VAEStageWithoutModel(VAEConfig(model=unused, aspect_ratios=BASE_SIZE))
    caption = CaptionStageWithoutModel(CaptionConfig(model=unused, max_image_side=CAPTION_SIDE))
    vae.vae = caption.model = object()  # no setup(): nothing is loaded and nothing of a model runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sides = {
            "old_path": lambda: old_actors(rows, spec.interpolation, CAPTION_SIDE),
            "new_path": lambda: new_actors(rows, vae, caption),
        }
        seconds, runs, outputs = alternate(sides, repeats)
    finally:
        torch.set_num_threads(threads)
    equivalent = _same_actor_inputs(outputs["old_path"], rows, spec)
    per_image = {name: s * 1000 / images for name, s in seconds.items()}
    return comparison(
        "gpu_actor_cpu_ms_per_image",
        "ms",
        per_image["old_path"],
        per_image["new_path"],
        target=10,
        equivalent=equivalent,
        note=(
            f"Process CPU ms (time.process_time, 1 torch thread) per {size[0]}x{size[1]} camera-like JPEG inside the "
            f"VAE and caption actors together, model forward excluded on both sides (and the caption processor, "
            f"identical on both). Old path (HEAD~3 functions): VAE full decode + EXIF transpose + resize to "
            f"cover + crop + normalise; caption draft decode + Lanczos thumbnail to {CAPTION_SIDE}. New path: "
            f"VAEStage.process_rows (prepared uint8 from the row bytes, stack, normalise, channels_last) and "
            f"CaptionStage.process_rows (PIL.fromarray), models replaced by stand-ins. Equivalent: the old "
            f"VAE tensors equal the new path's normalised prepared pixels within the draft decode's difference, and "
            f"caption images have the same size."
        ),
        images=images,
        runs=runs,
    )


def _same_actor_inputs(old: list, rows: list[Row], spec: PrepareSpec) -> bool:
    """Old VAE inputs vs the prepared ones (PSNR bound: draft may differ slightly), caption sizes equal."""
    from curation.records import get_pixels
    from curation.stages.vae import normalise

    for index, row in enumerate(rows):
        old_vae, old_caption = old[2 * index], old[2 * index + 1]
        prepared = get_pixels(row, "vae")
        new_vae = normalise(torch.from_numpy(prepared.copy())[None])
        caption_shape = get_pixels(row, "caption").shape[:2]
        if old_vae.shape != new_vae.shape or (old_caption.height, old_caption.width) != caption_shape:
            return False
        old_uint8 = ((old_vae[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        if psnr(old_uint8, prepared) < PSNR_MIN_DB:
            return False
    return True
