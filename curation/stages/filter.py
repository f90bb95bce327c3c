"""The image filter: validate and normalise each input image, or reject it with a reason, and prepare
the model inputs of the stages after it from the same decode.

Checks run cheapest first: byte size, then the header (format, pixel count, side length, aspect
ratio) before any pixel is decoded, then one decode. Accepted images are upright 8-bit RGB; the
original bytes are stored whenever they already are exactly that, otherwise a lossless PNG (then the
decode is at full size). When the original is kept, a JPEG is decoded at a reduced DCT scale that
still covers every prepared input (``PrepareSpec.decode_size``); the decode validates the whole stream
either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from curation.buckets import aspect_ratio_table
from curation.config import FilterConfig
from curation.records import REJECTED, Row, mark
from curation.stages.base import Stage, error_detail
from curation.stages.prepare import PrepareSpec

EMPTY = "empty"
FILE_SIZE = "file_size"
NOT_AN_IMAGE = "not_an_image"
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
UNSUPPORTED_MODE = "unsupported_mode"
TOO_SMALL = "too_small"
ASPECT_RATIO = "aspect_ratio"
REJECT_REASONS = (
    EMPTY, FILE_SIZE, NOT_AN_IMAGE, DECOMPRESSION_BOMB, CORRUPT, TRUNCATED, UNSUPPORTED_MODE, TOO_SMALL,
    ASPECT_RATIO,
)  # fmt: skip

# Formats whose bytes are stored as they are when the image is plain upright RGB. MPO (camera
# multi-picture JPEG) starts with an ordinary JPEG that every decoder reads as the photo.
KEEPABLE_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)


class Rejection(Exception):
    """An input the filter refuses: a fixed ``reason`` plus a human-readable ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


DecodeSize = Callable[[int, int], "tuple[int, int] | None"]  # (width, height) -> smallest decode (w, h)


@dataclass
class FilteredImage:
    data: bytes
    ext: str
    image: Image.Image  # upright RGB; smaller than the stored image after a reduced (draft) decode
    size: tuple[int, int]  # (width, height) of the stored image, upright
    notes: dict[str, object] = field(default_factory=dict)


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
            phash=str(imagehash.phash(filtered.image)),
            filter_notes=json.dumps(filtered.notes, sort_keys=True),
            bucket=bucket,
            bucket_h=bucket_h,
            bucket_w=bucket_w,
        )
        self.prepare.prepare(row, filtered.image)


def filter_image(data: bytes, config: FilterConfig, decode_size: DecodeSize | None = None) -> FilteredImage:
    """Upright 8-bit RGB image and the bytes to store for it; raises ``Rejection``.

    ``decode_size`` allows a reduced JPEG decode when the original bytes are kept (nothing to re-encode).
    """
    check_file_size(data, config.max_bytes)
    image = open_image(data, config.max_pixels)
    # Side lengths and aspect ratio do not change under EXIF rotation, so they are checked before decoding.
    check_geometry(image.width, image.height, config)
    source_format, high_depth, animated = image.format, _is_high_depth_rgb(image), _frame_count(image)
    full_size = (image.width, image.height)
    # Only JPEG decodes at reduced scale; asking other formats for EXIF may decode them early (PNG does).
    if decode_size and image.format == "JPEG" and _keeps_original(image, high_depth, animated):
        reduced = decode_size(*full_size)
        if reduced:
            image.draft("RGB", reduced)
    decode(image)
    upright, orientation = make_upright(image)
    if orientation in (5, 6, 7, 8):
        full_size = full_size[::-1]
    rgb, mode_note = to_rgb(upright)
    notes: dict[str, object] = {}
    if orientation != 1:
        notes["exif_transpose"] = orientation
    if mode_note or high_depth:
        notes["mode"] = mode_note or "RGB;16->RGB"
    if animated > 1:
        notes["frames"] = animated
    if not notes and source_format in KEEPABLE_FORMATS:
        return FilteredImage(data, KEEPABLE_FORMATS[source_format], rgb, full_size, notes)
    notes["reencoded"] = "png"
    return FilteredImage(encode_png(rgb, upright), "png", rgb, full_size, notes)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # unparsable EXIF is ignored by make_upright too
        return 1


def _keeps_original(image: Image.Image, high_depth: bool, frames: int) -> bool:
    """Whether the stored bytes will be the original (known from the header, before any decode)."""
    plain = image.mode == "RGB" and "transparency" not in image.info and not high_depth and frames == 1
    return plain and image.format in KEEPABLE_FORMATS and _orientation(image) not in range(2, 9)


def check_file_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise Rejection(EMPTY, "0 bytes")
    if len(data) > max_bytes:
        raise Rejection(FILE_SIZE, f"{len(data)} bytes > max {max_bytes}")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; refuses non-images and images with more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the explicit check below decides
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejection(NOT_AN_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise Rejection(DECOMPRESSION_BOMB, str(error)) from None
    except Exception as error:  # a recognised format whose header is broken
        raise _decode_rejection(error) from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise Rejection(DECOMPRESSION_BOMB, f"{image.width}x{image.height} = {pixels} pixels > max {max_pixels}")
    return image


def check_geometry(width: int, height: int, config: FilterConfig) -> None:
    if min(width, height) < config.min_side:
        raise Rejection(TOO_SMALL, f"min side {min(width, height)} < {config.min_side}")
    ratio = max(height / width, width / height)
    if ratio > config.max_aspect_ratio:
        raise Rejection(ASPECT_RATIO, f"aspect ratio {ratio:.2f} > {config.max_aspect_ratio:g} ({width}x{height})")


def decode(image: Image.Image) -> None:
    """Decode the pixels of the first frame; a damaged file is a ``truncated`` / ``corrupt`` rejection."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise Rejection(DECOMPRESSION_BOMB, str(error)) from None
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError... for bad data
        raise _decode_rejection(error) from None


def _decode_rejection(error: Exception) -> Rejection:
    detail = error_detail(error)
    return Rejection(TRUNCATED if "truncat" in detail.lower() else CORRUPT, detail)


def _frame_count(image: Image.Image) -> int:
    if image.format == "MPO":  # extra frames are previews / stereo views of the same photo
        return 1
    return getattr(image, "n_frames", 1) if getattr(image, "is_animated", False) else 1


def _is_high_depth_rgb(image: Image.Image) -> bool:
    """16-bit-per-channel RGB(A) PNGs decode to 8-bit modes; only the raw mode tells them apart."""
    return any(";16" in str(tile.args) for tile in image.tile) and image.mode in {"RGB", "RGBA"}


def make_upright(image: Image.Image) -> tuple[Image.Image, int]:
    """The image as it is meant to be displayed, and the EXIF orientation that was applied (1: none)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unparsable EXIF: nothing trustworthy to apply
        return image, 1
    if orientation not in range(2, 9):
        return image, 1
    return ImageOps.exif_transpose(image), int(orientation)


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB version of any mode, and a note like ``"CMYK->RGB"`` when a conversion happened."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image, None
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            converted = flatten_on_white(image)
        elif mode in _HIGH_DEPTH_MODES:
            converted = Image.fromarray(scale_to_uint8(np.asarray(image), mode), "L").convert("RGB")
        elif mode == "CMYK":
            converted = cmyk_to_rgb(image)
        else:
            converted = image.convert("RGB")
    except (ValueError, OSError) as error:
        raise Rejection(UNSUPPORTED_MODE, f"cannot convert mode {mode} to RGB: {error}") from None
    return converted, f"{mode}->RGB"


def flatten_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map gray values of a 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) image to 0..255."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
        scaled = values / 257.0
    elif mode == "I" and low >= 0 and high <= 255:
        scaled = values  # 8-bit data in a 32-bit container
    elif mode == "F" and low >= 0 and high <= 1.0:
        scaled = values * 255.0
    else:  # no known range: stretch what is there
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Through the embedded ICC profile when there is one (print CMYK is far from naive inversion)."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    return image.convert("RGB")


def encode_png(rgb: Image.Image, upright: Image.Image) -> bytes:
    """Lossless PNG of ``rgb``, keeping the EXIF block (orientation already applied) and an RGB ICC profile."""
    options: dict[str, object] = {}
    if upright.info.get("exif"):
        options["exif"] = upright.info["exif"]
    if upright.info.get("icc_profile") and upright.mode in {"RGB", "RGBA", "P", "PA"}:
        options["icc_profile"] = upright.info["icc_profile"]
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG", **options)
    return buffer.getvalue()
