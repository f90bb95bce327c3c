"""Photo-like benchmark inputs built from the real photos in ``examples/images`` (never noise images).

``mosaic`` tiles random crops of those photos (random photo, position, scale, flip and colour gain per
tile), so every generated image is a distinct picture: ``min_phash_distance`` checks that no two are
near-duplicates. Large "camera" JPEGs are mosaics upscaled to 12 or 24 MP with mild sensor-like noise,
so that their entropy-coded size (what a JPEG decode pays for) is in the range of real camera files.
"""

from __future__ import annotations

import functools
import io
import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from benchmarks.common import ROOT

PHOTOS = (
    "astronaut.jpg", "coffee_exif6.jpg", "coffee_square.webp", "hubble_cmyk.jpg", "hubble_wide.webp", "ihc_16x9.jpg",
    "retina.jpg", "rocket.jpg", "brick.jpg", "grass.png", "coins.png", "nested/chelsea.webp", "nested/clock.jpg",
    "nested/cell.webp", "nested/deeper/gravel.webp",
)  # fmt: skip
CAMERA_NOISE = 5.0  # sensor-like Gaussian noise (8-bit levels) on the upscaled large JPEGs
CAMERA_QUALITY = 94  # with that noise: ~3.7 MiB at 12 MP, ~7 MiB at 24 MP, as camera files


@functools.cache
def photos() -> tuple[Image.Image, ...]:
    """The bundled photos as upright RGB images."""
    out = []
    for name in PHOTOS:
        with Image.open(ROOT / "examples/images" / name) as image:
            out.append(ImageOps.exif_transpose(image).convert("RGB"))
    return tuple(out)


def _tile(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    photo = photos()[rng.integers(len(photos()))]
    scale = rng.uniform(0.35, 1.0)
    crop_w, crop_h = max(16, int(photo.width * scale)), max(16, int(photo.height * scale))
    left, top = rng.integers(0, photo.width - crop_w + 1), rng.integers(0, photo.height - crop_h + 1)
    tile = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        tile = ImageOps.mirror(tile)
    gains = rng.uniform(0.7, 1.3, 3)
    return Image.fromarray(np.clip(np.asarray(tile, dtype=np.float32) * gains, 0, 255).astype(np.uint8))


def mosaic(seed: int, size: tuple[int, int]) -> Image.Image:
    """A (w, h) RGB picture of 2-3 × 2-3 tiles cut from the bundled photos; ``seed`` decides everything."""
    rng = np.random.default_rng(seed)
    columns, rows = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    width, height = size
    canvas = Image.new("RGB", size)
    xs, ys = np.linspace(0, width, columns + 1).astype(int), np.linspace(0, height, rows + 1).astype(int)
    for (x0, x1), (y0, y1) in itertools.product(itertools.pairwise(xs), itertools.pairwise(ys)):
        canvas.paste(_tile(rng, (int(x1 - x0), int(y1 - y0))), (int(x0), int(y0)))
    return canvas


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def camera_jpeg(seed: int, size: tuple[int, int], quality: int = CAMERA_QUALITY) -> bytes:
    """A large photo-like JPEG: a mosaic made at 1/4 of ``size``, upscaled bicubic, plus sensor-like noise."""
    small = mosaic(seed, (size[0] // 4, size[1] // 4)).resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed + 1_000_003)
    pixels = np.asarray(small, dtype=np.float32)
    pixels += rng.normal(0.0, CAMERA_NOISE, pixels.shape).astype(np.float32)
    return jpeg_bytes(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), quality)


def sizes_for(count: int, low: int, high: int, seed: int = 0) -> list[tuple[int, int]]:
    """Image sizes (w, h) with sides in [low, high] and aspect ratios up to 2:1 both ways."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        long_side = int(rng.integers(low, high + 1))
        short_side = int(long_side / rng.uniform(1.0, 2.0))
        short_side = max(low // 2, short_side)
        out.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
    return out


def write_distinct_jpegs(directory: Path, count: int, low: int = 256, high: int = 512, seed: int = 0) -> list[Path]:
    """``count`` distinct photo-like JPEGs in ``directory`` (created): the benchmark's pipeline inputs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, size in enumerate(sizes_for(count, low, high, seed)):
        path = directory / f"img{index:05d}.jpg"
        path.write_bytes(jpeg_bytes(mosaic(seed * 1_000_000 + index, size)))
        paths.append(path)
    return paths


def min_phash_distance(paths: list[Path], chunk: int = 256) -> int:
    """Smallest Hamming distance between the perceptual hashes of any two images (near-duplicates: <= ~8)."""
    import imagehash

    bits = [imagehash.phash(Image.open(path)).hash.flatten() for path in paths]
    if len(bits) < 2:
        return 64
    hashes = np.packbits(np.array(bits, dtype=bool), axis=1).view(np.uint64)[:, 0]
    popcount = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)
    best = 64
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk, None] ^ hashes[None, :]
        distances = popcount[block.view(np.uint8)].reshape(*block.shape, 8).sum(axis=2)
        rows = np.arange(block.shape[0])
        distances[rows, start + rows] = 64  # an image against itself
        best = min(best, int(distances.min()))
    return best
