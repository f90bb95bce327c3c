"""The image filter: validate and normalise each input image, or reject it with a fixed reason code, and
prepare the model inputs of the stages after it from the same decode.

Rules run cheapest first: byte size, then the header (format, pixel count, side length, aspect ratio,
frames) before any pixel is decoded, then one decode, then the content rules (transparency, blank,
blurry, grayscale) on a small view of the decoded image. Every rejection carries the measured value in
its detail; the values measured on a kept image go to the row's ``filter_values`` (JSON {name: number},
``FILTER_VALUE_NAMES``), and from there into the sample's json and the index.

Accepted images are upright 8-bit RGB. The original bytes are stored whenever they already are exactly
that in JPEG, PNG or WebP; anything else (other formats, EXIF rotation, other modes, animation, a
downscale to ``max_train_pixels``) is stored as a lossless PNG. When the original is kept, a JPEG is
decoded at a reduced DCT scale that still covers every prepared input (``PrepareSpec.decode_size``); the
decode validates the whole stream either way. The content values are measured on that decode, so they
can differ slightly between recipes with different prepared sizes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from curation.buckets import aspect_ratio_table
from curation.config import FilterConfig
from curation.io.layout import FILTER_VALUE_TYPES
from curation.records import REJECTED, Row, mark
from curation.stages.base import Stage
from curation.stages.filter_checks import (
    ContentValues,
    aspect_ratio,
    check_bomb,
    check_content,
    check_file_size,
    check_format,
    check_geometry,
    check_transparent,
    content_view,
    measure_content,
    training_size,
)
from curation.stages.filter_decode import (
    decode,
    encode_png,
    frame_count,
    is_high_depth_rgb,
    make_upright,
    open_image,
    orientation,
    to_rgb,
)
from curation.stages.filter_reasons import ANIMATED, REJECT_REASONS, Rejection
from curation.stages.hashing import image_phash
from curation.stages.prepare import PrepareSpec
from curation.thumbnails import reject_thumbnail

# Formats whose bytes are stored as they are when the image is plain upright RGB. MPO (camera
# multi-picture JPEG) starts with an ordinary JPEG that every decoder reads as the photo.
KEEPABLE_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
# The measured values of a kept image (``filter_values``); the index has them as ``filter_<name>`` columns.
FILTER_VALUE_NAMES = tuple(FILTER_VALUE_TYPES)
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height

DecodeSize = Callable[[int, int], "tuple[int, int] | None"]  # (width, height) -> smallest decode (w, h)

__all__ = ["FILTER_VALUE_NAMES", "REJECT_REASONS", "FilterStage", "FilteredImage", "Rejection", "filter_image"]


@dataclass
class FilteredImage:
    data: bytes
    ext: str
    image: Image.Image  # upright RGB; smaller than the stored image after a reduced (draft) decode
    size: tuple[int, int]  # (width, height) of the stored image, upright
    notes: dict[str, object] = field(default_factory=dict)  # what the filter changed
    values: dict[str, float | int] = field(default_factory=dict)  # what the rules measured (FILTER_VALUE_NAMES)


class FilterStage(Stage):
    """CPU-only validation and normalisation of the raw image bytes of each row, plus the model inputs."""

    name = "filter"

    def __init__(self, config: FilterConfig, prepare: PrepareSpec) -> None:
        super().__init__(config.resources)
        aspect_ratio_table(prepare.base_size)  # an unknown base size is a config error: fail at construction
        self.config = config
        self.prepare = prepare

    def process_row(self, row: Row) -> None:
        original = row["image"] or b""
        try:
            filtered = filter_image(original, self.config, self.prepare.decode_size)
        except Rejection as rejection:
            row["thumbnail"] = reject_thumbnail(original, rejection.reason)
            mark(row, REJECTED, self.name, rejection.reason, rejection.detail)
            return
        width, height = filtered.size
        bucket, (bucket_h, bucket_w) = self.prepare.bucket(height, width)
        row.update(
            image=filtered.data,
            image_ext=filtered.ext,
            width=width,
            height=height,
            sha256=hashlib.sha256(original).hexdigest(),
            phash=image_phash(original),
            filter_notes=json.dumps(filtered.notes, sort_keys=True),
            filter_values=json.dumps(filtered.values, sort_keys=True),
            bucket=bucket,
            bucket_h=bucket_h,
            bucket_w=bucket_w,
        )
        self.prepare.prepare(row, filtered.image)


def filter_image(data: bytes, config: FilterConfig, decode_size: DecodeSize | None = None) -> FilteredImage:
    """Upright 8-bit RGB image and the bytes to store for it; raises ``Rejection``.

    ``decode_size`` allows a reduced JPEG decode when the original bytes are kept (nothing to re-encode).
    """
    image, frames = open_checked(data, config)
    (width, height), source_format, high_depth = image.size, image.format, is_high_depth_rgb(image)
    train_size = training_size(width, height, config.max_train_pixels)  # stored orientation
    _draft(image, train_size, decode_size if _keeps_original(image, high_depth, frames) else None, config.draft)
    decode(image, data)
    upright, turned = make_upright(image)
    rgb, mode_note, transparent = to_rgb(upright)
    check_transparent(transparent, config.max_transparent_fraction)
    size = (height, width) if turned in _ROTATED else (width, height)
    notes: dict[str, object] = {}
    if train_size:
        stored = train_size[::-1] if turned in _ROTATED else train_size
        rgb = rgb.resize(stored, Image.Resampling.LANCZOS)
        notes["downscaled"] = f"{size[0]}x{size[1]}->{stored[0]}x{stored[1]}"
        size = stored
    view = content_view(rgb)
    content = measure_content(view)
    check_content(content, view.size, config)
    values = measured_values(data, (width, height), frames, transparent, content)
    if turned != 1:
        notes["exif_transpose"] = turned
    if mode_note or high_depth:
        notes["mode"] = mode_note or "RGB;16->RGB"
    if frames > 1:
        notes["frames"] = frames
    if not notes and source_format in KEEPABLE_FORMATS:
        return FilteredImage(data, KEEPABLE_FORMATS[source_format], rgb, size, notes, values)
    if source_format not in KEEPABLE_FORMATS:
        notes["source_format"] = source_format
    notes["reencoded"] = "png"
    return FilteredImage(encode_png(rgb, upright), "png", rgb, size, notes, values)


def open_checked(data: bytes, config: FilterConfig) -> tuple[Image.Image, int]:
    """The opened (not yet decoded) image and its frame count, after every rule the header can decide."""
    check_file_size(data, config.max_bytes)
    image = open_image(data)
    check_format(image.format, config.allowed_formats)
    check_bomb(image.width, image.height, config.max_pixels)
    check_geometry(image.width, image.height, config)  # sides, pixels and aspect ratio survive EXIF rotation
    frames = frame_count(image)
    if frames > 1 and config.animated_policy == "reject":
        raise Rejection(ANIMATED, f"{frames} frames (animated_policy=reject)")
    return image, frames


def measured_values(
    data: bytes, size: tuple[int, int], frames: int, transparent: float, content: ContentValues
) -> dict[str, float | int]:
    """``filter_values`` of a kept image (``FILTER_VALUE_NAMES``); ``size`` is the input's, as stored."""
    width, height = size
    return {
        "file_bytes": len(data),
        "pixels": width * height,
        "min_side": min(width, height),
        "aspect_ratio": round(aspect_ratio(width, height), 4),
        "frames": frames,
        "transparent_fraction": round(transparent, 4),
        "gray_std": round(content.gray_std, 4),
        "laplacian_var": round(content.laplacian_var, 4),
        "chroma": content.chroma,
    }


def _keeps_original(image: Image.Image, high_depth: bool, frames: int) -> bool:
    """Whether the stored bytes will be the original, as far as the header tells (before any decode).

    Only asked of JPEGs: other formats may decode early when asked for their EXIF (PNG does).
    """
    plain = image.format == "JPEG" and image.mode == "RGB" and "transparency" not in image.info
    return plain and not high_depth and frames == 1 and orientation(image) == 1


def _draft(image: Image.Image, train_size: tuple[int, int] | None, decode_size: DecodeSize | None, draft: bool):
    """Ask libjpeg for a reduced DCT-scale decode covering what will be made of the image (JPEG only)."""
    if image.format != "JPEG":
        return
    if train_size is not None:
        if draft:
            image.draft(None, train_size)  # the stored image is downscaled anyway; keep the mode (CMYK, L)
        return
    reduced = decode_size(*image.size) if decode_size else None
    if reduced:
        image.draft("RGB", reduced)
