"""Opening, decoding and normalising one image for the filter: header parse, damage classification,
EXIF orientation, conversion of every Pillow mode to 8-bit RGB, lossless PNG encoding.

Images are recognised by content, never by a file extension: whatever format the installed Pillow opens
is used. Data Pillow does not identify is checked against a few well-known signatures, so that a damaged
PNG or JPEG is ``truncated`` / ``corrupt`` rather than ``not_an_image``, and a format that needs a plugin
(HEIF, JPEG XL, AVIF without libavif) is ``unsupported_format`` with what is missing in the detail.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from curation.stages.base import error_detail
from curation.stages.filter_reasons import (
    CORRUPT,
    DECOMPRESSION_BOMB,
    NOT_AN_IMAGE,
    TRUNCATED,
    UNSUPPORTED_FORMAT,
    UNSUPPORTED_MODE,
    Rejection,
)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)
# Words of Pillow error messages meaning "this Pillow cannot decode that (variant of the) format".
_UNSUPPORTED_WORDS = ("not available", "not installed", "cannot find loader", "ghostscript", "unsupported", "not supp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
# Signatures of formats Pillow decodes: data starting like this that Pillow cannot identify is damaged.
_SIGNATURES = (
    (b"\xff\xd8", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)


# ---------------------------------------------------------------- header


def open_image(data: bytes) -> Image.Image:
    """Parse the header only; a non-image, a damaged header or an undecodable format is a ``Rejection``."""
    try:
        with warnings.catch_warnings(record=True) as messages:
            warnings.simplefilter("always")  # Pillow warns why a plugin declined (e.g. "support not installed")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise unidentified_rejection(data, [str(message.message) for message in messages]) from None
    except Image.DecompressionBombError as error:
        raise Rejection(DECOMPRESSION_BOMB, str(error)) from None
    except Exception as error:  # a recognised format whose header is broken or uses an unsupported variant
        raise _checked_size(pillow_error_rejection(error), data) from None
    if isinstance(image, ImageFile.StubImageFile):  # identified, but decoded only by a registered handler
        decode(image, data)  # without one: "cannot find loader" -> unsupported_format
    return image


def unidentified_rejection(data: bytes, messages: list[str]) -> Rejection:
    """Why Pillow could not identify ``data``: a known format it cannot decode, a damaged image, or no image."""
    missing = [message for message in messages if "not installed" in message]
    if missing:
        return Rejection(UNSUPPORTED_FORMAT, "; ".join(missing))
    plugin_format = needs_plugin(data)
    if plugin_format:
        return Rejection(UNSUPPORTED_FORMAT, plugin_format)
    if data.startswith(_PNG_SIGNATURE):
        return _damage_rejection("PNG", png_damage(data))
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            damage = jpeg_damage(data) if name == "JPEG" else CORRUPT
            return _damage_rejection(name, damage)
    if _iso_brands(data) & _AVIF_BRANDS:  # AVIF support present (else needs_plugin said so): a damaged file
        return _damage_rejection("AVIF", CORRUPT)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _damage_rejection("WEBP", CORRUPT)
    return Rejection(NOT_AN_IMAGE, "not a recognised image format")


def _damage_rejection(name: str, reason: str) -> Rejection:
    what = "the data ends inside its header" if reason == TRUNCATED else "its header is unreadable"
    return Rejection(reason, f"{name} signature, but {what}")


def needs_plugin(data: bytes) -> str | None:
    """What is missing to decode a known image format this Pillow does not read, or None."""
    brands = _iso_brands(data)
    if brands & _AVIF_BRANDS and not avif_supported():
        return "AVIF: this Pillow was built without AVIF support (libavif)"
    if brands & _HEIF_BRANDS and not brands & _AVIF_BRANDS:
        return "HEIF/HEIC: needs a Pillow plugin (pillow-heif)"
    if data.startswith(b"\xff\x0a") or data.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEG XL: needs a Pillow plugin (e.g. pillow-jxl-plugin)"
    return None


def avif_supported() -> bool:
    """Whether this Pillow decodes AVIF (Pillow >= 11.2 built with libavif)."""
    try:
        from PIL import AvifImagePlugin
    except ImportError:
        return False
    return bool(getattr(AvifImagePlugin, "SUPPORTED", False))


def _iso_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO base media file (HEIF, AVIF), empty for anything else."""
    if data[4:8] != b"ftyp" or len(data) < 12:
        return set()
    box_end = min(struct.unpack(">I", data[:4])[0], len(data), 256)
    return {data[8:12], *(data[offset : offset + 4] for offset in range(16, box_end - 3, 4))}


def png_damage(data: bytes) -> str:
    """``truncated`` when every chunk is sound up to where the data stops, else ``corrupt``."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if not kind.isalpha() or length > 2**31 - 1:
            return CORRUPT
        end = offset + 12 + length
        if end > len(data):
            return TRUNCATED
        if struct.unpack(">I", data[end - 4 : end])[0] != zlib.crc32(data[offset + 4 : end - 4]):
            return CORRUPT
        offset = end
    return TRUNCATED


def jpeg_damage(data: bytes) -> str:
    """``truncated`` when the marker segments are sound up to where the data stops, else ``corrupt``."""
    offset = 2
    while offset < len(data):
        if data[offset] != 0xFF:
            return CORRUPT
        while offset < len(data) and data[offset] == 0xFF:  # fill bytes
            offset += 1
        if offset + 3 > len(data):
            return TRUNCATED
        marker = data[offset]
        if marker in (0x00, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return CORRUPT  # no header segment may be one of these
        offset += 1 + struct.unpack(">H", data[offset + 1 : offset + 3])[0]
    return TRUNCATED


def pillow_error_rejection(error: Exception, image_format: str | None = None) -> Rejection:
    """The reason for an error Pillow raised on a recognised format (while parsing or decoding)."""
    detail = error_detail(error)
    if image_format:
        detail = f"{image_format}: {detail}"
    lowered = detail.lower()
    if "truncat" in lowered:
        return Rejection(TRUNCATED, detail)
    if any(word in lowered for word in _UNSUPPORTED_WORDS):
        return Rejection(UNSUPPORTED_FORMAT, detail)
    return Rejection(CORRUPT, detail)


# ---------------------------------------------------------------- pixels


def decode(image: Image.Image, data: bytes) -> None:
    """Decode the pixels of the first frame; a damaged file is a ``truncated`` / ``corrupt`` rejection."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise Rejection(DECOMPRESSION_BOMB, str(error)) from None
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError... for bad data
        raise _checked_size(pillow_error_rejection(error, image.format), data) from None


def _checked_size(rejection: Rejection, data: bytes) -> Rejection:
    """``truncated`` instead of ``corrupt`` when the container header states more bytes than there are
    (RIFF, i.e. WebP: libwebp only says it could not decode)."""
    if rejection.reason == CORRUPT and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if declared > len(data):
            return Rejection(TRUNCATED, f"{rejection.detail} (RIFF header declares {declared} bytes, got {len(data)})")
    return rejection


def frame_count(image: Image.Image) -> int:
    """Frames of an animation (or pages of a multi-page TIFF); 1 for a still image. Only the first is used,
    so damage after the first frame ends the count rather than the image."""
    if image.format == "MPO":  # extra frames are previews / stereo views of the same photo
        return 1
    try:
        return getattr(image, "n_frames", 1) if getattr(image, "is_animated", False) else 1
    except Exception as error:  # counting seeks through the frames: damage in the first one shows here
        raise pillow_error_rejection(error, image.format) from None


def is_high_depth_rgb(image: Image.Image) -> bool:
    """16-bit-per-channel RGB(A) PNGs decode to 8-bit modes; only the raw mode tells them apart."""
    return any(";16" in str(tile.args) for tile in image.tile) and image.mode in {"RGB", "RGBA"}


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8); 1 when absent or unparsable (``make_upright`` ignores those too)."""
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def make_upright(image: Image.Image) -> tuple[Image.Image, int]:
    """The image as it is meant to be displayed, and the EXIF orientation that was applied (1: none)."""
    value = orientation(image)
    if value == 1:
        return image, 1
    return ImageOps.exif_transpose(image), value


def has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None, float]:
    """8-bit RGB version of any mode, a note like ``"CMYK->RGB"`` when a conversion happened, and the
    transparent fraction of the image (``1 - mean(alpha) / 255``; 0 without alpha)."""
    mode = image.mode
    if mode == "RGB" and not has_alpha(image):
        return image, None, 0.0
    transparent = 0.0
    try:
        if has_alpha(image):
            converted, transparent = flatten_on_white(image)
        elif mode in _HIGH_DEPTH_MODES:
            converted = Image.fromarray(scale_to_uint8(np.asarray(image), mode), "L").convert("RGB")
        elif mode == "CMYK":
            converted = cmyk_to_rgb(image)
        else:
            converted = image.convert("RGB")
    except (ValueError, OSError) as error:
        raise Rejection(UNSUPPORTED_MODE, f"cannot convert mode {mode} to RGB: {error}") from None
    return converted, f"{mode}->RGB", transparent


def flatten_on_white(image: Image.Image) -> tuple[Image.Image, float]:
    """The image composited onto white, and its transparent fraction ``1 - mean(alpha) / 255``."""
    rgba = image.convert("RGBA")
    histogram = rgba.getchannel("A").histogram()
    mean_alpha = sum(value * count for value, count in enumerate(histogram)) / max(sum(histogram), 1)
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return flat, 1.0 - mean_alpha / 255.0


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
