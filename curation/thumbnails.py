"""Small JPEG thumbnails of rejected inputs, for the report: the rejects files' optional ``thumbnail`` column.

One function makes them (``reject_thumbnail``); the stages that reject inputs (filter, scorers, dedup) call it
just before ``mark`` drops the image bytes. Never for ``nsfw`` rejects: the report shows a
placeholder for those. A thumbnail is best effort: an input that does not decode, or whose header claims more
than ``MAX_SOURCE_PIXELS``, gets none (and costs no decode).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps

THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 75
MAX_SOURCE_PIXELS = 64_000_000  # larger inputs (bombs, giant scans) get no thumbnail
NO_THUMBNAIL_REASONS = frozenset({"nsfw"})
# Inputs that cannot decode, or must not be decoded (too large): no attempt is made.
UNDECODABLE_REASONS = frozenset(
    {"empty", "file_size", "not_an_image", "unsupported_format", "decompression_bomb", "corrupt", "truncated"}
)


def make_thumbnail(data: bytes | None, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """JPEG bytes of ``data``'s first frame, upright, longest side at most ``side``; None when it cannot decode."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                return None
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced DCT scale
            small = ImageOps.exif_transpose(image.convert("RGBA" if _has_alpha(image) else "RGB"))
    except Exception:  # any decoder error: the input is damaged or not an image, so no thumbnail
        return None
    if small.mode == "RGBA":  # transparency on white, as the filter flattens it
        small = Image.alpha_composite(Image.new("RGBA", small.size, "white"), small)
    return _jpeg(small, side)


def _jpeg(image: Image.Image, side: int) -> bytes:
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def reject_thumbnail(data: bytes | None, reasons: str | Iterable[str]) -> bytes | None:
    """``make_thumbnail`` of a rejected input; None when any of its rejection ``reasons`` is ``nsfw`` (never shown)
    or says the input does not decode (no attempt)."""
    names = {reasons} if isinstance(reasons, str) else set(reasons)
    return None if names & (NO_THUMBNAIL_REASONS | UNDECODABLE_REASONS) else make_thumbnail(data)


def view_thumbnail(pixels: np.ndarray, reasons: Iterable[str], side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A thumbnail of an already decoded view (uint8 HWC, e.g. the scorers' square view): no decode of the
    original inside a model stage. None for ``nsfw``."""
    if set(reasons) & NO_THUMBNAIL_REASONS:
        return None
    return _jpeg(Image.fromarray(pixels, "RGB"), side)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
