"""Model inputs prepared on CPUs from the filter's single decode of each original.

The GPU stages receive ready uint8 pixels and never decode or resize a full-resolution image:

- VAE: PixArt's online multi-scale transform up to the tensor conversion (resize to cover the bucket,
  centre crop), re-implemented on PIL because torchvision is not available next to the CPU torch;
- caption: the image shrunk to ``caption.max_image_side`` (the processor's own resize, normalisation and
  LLaVA-NeXT tiling still run in the caption actor, on this small image);
- scorers: CLIP's view (shortest side to ``scorer_side``, centre crop), when a scorer needs it.

JPEG ``draft`` (DCT-domain downscaling inside libjpeg) makes the decode itself cheaper; the reduced decode
always keeps at least ``DRAFT_MARGIN`` times the largest target on each side, so the final resampling
still starts from more pixels than it produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.buckets import bucket_for
from curation.records import Row, put_pixels

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
DRAFT_MARGIN = 2


def cover_size(height: int, width: int, bucket_hw: tuple[int, int]) -> tuple[int, int]:
    """PixArt's ``resize_size`` (h, w): the smallest aspect-preserving size covering the bucket."""
    target_h, target_w = bucket_hw
    if target_h / height > target_w / width:
        return target_h, int(width * target_h / height)
    return int(height * target_w / width), target_w


def center_crop_box(height: int, width: int, bucket_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) with torchvision ``CenterCrop``'s rounding."""
    target_h, target_w = bucket_hw
    # torchvision: int(round((h - th) / 2.0)); Python's round() sends x.5 to the even neighbour.
    top = round((height - target_h) / 2.0)
    left = round((width - target_w) / 2.0)
    return left, top, left + target_w, top + target_h


def bucket_crop(image: Image.Image, bucket_hw: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """uint8 [h, w, 3] of the bucket: RGB, resize to cover (``cover_size`` of the image's size), centre crop."""
    image = image.convert("RGB")
    resized_h, resized_w = cover_size(image.height, image.width, bucket_hw)
    # torchvision's Resize on a PIL image is exactly ``PIL.Image.resize`` with the same filter.
    image = image.resize((resized_w, resized_h), INTERPOLATIONS[interpolation])
    return np.asarray(image.crop(center_crop_box(resized_h, resized_w, bucket_hw)), dtype=np.uint8)


def shrunk_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the longest side at most ``max_side``; never enlarged."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def caption_view(image: Image.Image, max_side: int) -> np.ndarray:
    """uint8 [h, w, 3]: the image with its longest side <= ``max_side`` (Lanczos, aspect kept)."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def scorer_view(image: Image.Image, side: int) -> np.ndarray:
    """uint8 [side, side, 3]: CLIP's preprocessing geometry (shortest side to ``side`` bicubic, centre crop)."""
    image = image.convert("RGB")
    scale = side / min(image.width, image.height)
    resized = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    image = image.resize(resized, Image.Resampling.BICUBIC)
    return np.asarray(image.crop(center_crop_box(resized[1], resized[0], (side, side))), dtype=np.uint8)


@dataclass(frozen=True)
class PrepareSpec:
    """Which model inputs the filter stage prepares for the stages after it, and how."""

    base_size: int  # PixArt aspect-ratio table (256 / 512 / 1024 / 2048)
    interpolation: str = "bicubic"
    caption_max_side: int | None = None  # None: no caption stage downstream
    scorer_side: int | None = None  # None: no model scorer downstream
    vae: bool = True
    draft: bool = True

    def bucket(self, height: int, width: int) -> tuple[str, tuple[int, int]]:
        return bucket_for(height, width, self.base_size)

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest (w, h) a reduced JPEG decode may produce for these targets; None: decode in full."""
        if not self.draft:
            return None
        need_w, need_h = 1, 1
        if self.vae:
            cover_h, cover_w = cover_size(height, width, self.bucket(height, width)[1])
            need_w, need_h = max(need_w, cover_w), max(need_h, cover_h)
        if self.caption_max_side:
            cap_w, cap_h = shrunk_size(width, height, self.caption_max_side)
            need_w, need_h = max(need_w, cap_w), max(need_h, cap_h)
        if self.scorer_side:
            scale = self.scorer_side / min(width, height)
            need_w, need_h = max(need_w, round(width * scale)), max(need_h, round(height * scale))
        return need_w * DRAFT_MARGIN, need_h * DRAFT_MARGIN

    def prepare(self, row: Row, image: Image.Image) -> None:
        """Store every model input of one upright RGB image in the row (bucket already set)."""
        if self.vae:
            put_pixels(row, "vae", bucket_crop(image, (row["bucket_h"], row["bucket_w"]), self.interpolation))
        if self.caption_max_side:
            put_pixels(row, "caption", caption_view(image, self.caption_max_side))
        if self.scorer_side:
            put_pixels(row, "scorer", scorer_view(image, self.scorer_side))
