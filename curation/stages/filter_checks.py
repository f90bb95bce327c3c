"""The filter's rules: each measures one value, compares it with its ``FilterConfig`` threshold and raises a
``Rejection`` with its fixed reason and the measured value in the detail.

Header rules (bytes, format, geometry, frames) run before any pixel is decoded. Content rules (blank,
blurry, grayscale) run on one small view of the decoded, upright RGB image: BOX-downscaled (area average)
so that its longest side is at most ``VIEW_SIDE``, never enlarged. Their thresholds therefore do not
depend on the resolution of the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.config import FilterConfig
from curation.stages.filter_reasons import (
    ASPECT_RATIO,
    BLANK,
    BLURRY,
    DECOMPRESSION_BOMB,
    EMPTY,
    FILE_SIZE,
    FORMAT_NOT_ALLOWED,
    GRAYSCALE,
    TOO_FEW_PIXELS,
    TOO_MANY_PIXELS,
    TOO_SMALL,
    TRANSPARENT,
    Rejection,
)
from curation.stages.prepare import shrunk_size

VIEW_SIDE = 256  # longest side of the gray view the blank / blurry / grayscale rules measure
# Pillow reports camera multi-picture JPEGs as MPO: an allow-list naming JPEG accepts them.
_FORMAT_ALIASES = {"MPO": "JPEG"}


@dataclass(frozen=True)
class ContentValues:
    """What the content rules measured on the small view."""

    gray_std: float  # population std of the gray (ITU-R 601 luma) view, 0..255 scale
    laplacian_var: float  # variance of the 4-neighbour Laplacian over the view's interior pixels
    chroma: int  # largest max(R, G, B) - min(R, G, B) of any view pixel; 0 for a gray image


# ---------------------------------------------------------------- header rules


def check_file_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise Rejection(EMPTY, "0 bytes")
    if len(data) > max_bytes:
        raise Rejection(FILE_SIZE, f"{len(data)} bytes > max {max_bytes}")


def check_format(image_format: str | None, allowed: list[str] | None) -> None:
    if allowed is None:
        return
    name = _FORMAT_ALIASES.get(image_format or "", image_format or "unknown")
    if name not in allowed:
        raise Rejection(FORMAT_NOT_ALLOWED, f"format {name} not in allowed_formats {allowed}")


def check_bomb(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise Rejection(DECOMPRESSION_BOMB, f"{width}x{height} = {pixels} pixels > max {max_pixels}")


def check_geometry(width: int, height: int, config: FilterConfig) -> None:
    """Side length, pixel count and aspect ratio; none changes under EXIF rotation."""
    if min(width, height) < config.min_side:
        raise Rejection(TOO_SMALL, f"min side {min(width, height)} < {config.min_side}")
    pixels = width * height
    if pixels < config.min_pixels:
        raise Rejection(TOO_FEW_PIXELS, f"{width}x{height} = {pixels} pixels < min {config.min_pixels}")
    ratio = aspect_ratio(width, height)
    if ratio > config.max_aspect_ratio:
        raise Rejection(ASPECT_RATIO, f"aspect ratio {ratio:.2f} > {config.max_aspect_ratio:g} ({width}x{height})")
    cap = config.max_train_pixels
    if cap is not None and pixels > cap and config.too_many_pixels_policy == "reject":
        raise Rejection(TOO_MANY_PIXELS, f"{width}x{height} = {pixels} pixels > max_train_pixels {cap}")


def aspect_ratio(width: int, height: int) -> float:
    return max(height / width, width / height)


def training_size(width: int, height: int, cap: int | None) -> tuple[int, int] | None:
    """(w, h) to downscale to so that w * h <= ``cap`` (same scale on both sides), or None when within it."""
    if cap is None or width * height <= cap:
        return None
    scale = math.sqrt(cap / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


# ---------------------------------------------------------------- content rules


def check_transparent(fraction: float, max_fraction: float) -> None:
    if fraction > max_fraction:
        raise Rejection(TRANSPARENT, f"transparent fraction {fraction:.4f} > max {max_fraction:g}")


def content_view(rgb: Image.Image) -> Image.Image:
    """The RGB view the content rules measure: longest side <= ``VIEW_SIDE``, area-averaged (BOX)."""
    size = shrunk_size(rgb.width, rgb.height, VIEW_SIDE)
    # reducing_gap: an integer-factor reduce() first (a plain box average, ~2.5x faster on large images)
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of ``up + down + left + right - 4 * centre`` over the interior pixels (0 below 3x3)."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    values = gray.astype(np.float64)
    centre = values[1:-1, 1:-1]
    laplacian = values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2] + values[1:-1, 2:] - 4.0 * centre
    return float(laplacian.var())


def measure_content(view: Image.Image) -> ContentValues:
    gray = np.asarray(view.convert("L"), dtype=np.float64)
    red, green, blue = (np.asarray(band) for band in view.split())  # elementwise: faster than axis=2 reductions
    chroma = int((np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)).max())
    return ContentValues(gray_std=float(gray.std()), laplacian_var=laplacian_variance(gray), chroma=chroma)


def check_content(values: ContentValues, view_size: tuple[int, int], config: FilterConfig) -> None:
    view = f"view {view_size[0]}x{view_size[1]}"
    if values.gray_std < config.min_gray_std:
        raise Rejection(BLANK, f"gray std {values.gray_std:.4f} < min {config.min_gray_std:g} ({view})")
    if values.laplacian_var < config.min_laplacian_var:
        detail = f"laplacian variance {values.laplacian_var:.4f} < min {config.min_laplacian_var:g} ({view})"
        raise Rejection(BLURRY, detail)
    if config.grayscale_policy == "reject" and values.chroma <= config.grayscale_max_chroma:
        raise Rejection(GRAYSCALE, f"chroma {values.chroma} <= grayscale_max_chroma {config.grayscale_max_chroma:g}")
