"""The filter's fixed reject reason codes (free text goes in ``detail``) and the exception that carries them."""

from __future__ import annotations

# Bytes and container
EMPTY = "empty"
FILE_SIZE = "file_size"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"  # a known image format this Pillow cannot decode (detail: what is missing)
FORMAT_NOT_ALLOWED = "format_not_allowed"
# Decode
DECOMPRESSION_BOMB = "decompression_bomb"
CORRUPT = "corrupt"
TRUNCATED = "truncated"
UNSUPPORTED_MODE = "unsupported_mode"
# Geometry (from the header, before any pixel is decoded)
TOO_SMALL = "too_small"
TOO_FEW_PIXELS = "too_few_pixels"
TOO_MANY_PIXELS = "too_many_pixels"
ASPECT_RATIO = "aspect_ratio"
ANIMATED = "animated"
# Content (from the decoded pixels)
TRANSPARENT = "transparent"
BLANK = "blank"
BLURRY = "blurry"
GRAYSCALE = "grayscale"

REJECT_REASONS = (
    EMPTY, FILE_SIZE, NOT_AN_IMAGE, UNSUPPORTED_FORMAT, FORMAT_NOT_ALLOWED, DECOMPRESSION_BOMB, CORRUPT, TRUNCATED,
    UNSUPPORTED_MODE, TOO_SMALL, TOO_FEW_PIXELS, TOO_MANY_PIXELS, ASPECT_RATIO, ANIMATED, TRANSPARENT, BLANK, BLURRY,
    GRAYSCALE,
)  # fmt: skip


class Rejection(Exception):
    """An input the filter refuses: a fixed ``reason`` plus a human-readable ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
