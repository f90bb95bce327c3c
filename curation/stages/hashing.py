"""The cheap per-input hash pass that global deduplication runs on, before any model stage.

Per input: the SHA-256 of its bytes, the upright pixel count from the image header, and a 64-bit
perceptual hash of a small view. The view is a reduced decode (JPEG ``draft`` to at least
``PHASH_DRAFT_SIDE`` px on each side: a few ms even for large photos), turned upright by its EXIF
orientation, flattened on white when it has transparency, then gray.

The hash is pHash (``imagehash.phash``'s recipe: 32x32 LANCZOS resize, 2-D DCT-II, the signs of the
8x8 lowest frequencies against their median) with one change: the mean-free 32x32 view is weighted by
a centred Gaussian window (sigma = a quarter of the side) before the DCT. Plain pHash gives the image
border full weight, so cropping 1-2% off a side moves many of its bits: measured on the photos of
``examples/images`` (re-encodes at JPEG quality 10-95, PNG/WebP, 25-150% resizes, EXIF rotations and
random crops of 0-2% per side), 53 of 459 copies were more than 6 bits from their original with plain
pHash, 8 with the window (all on fine periodic textures), while distinct photos stay 18+ bits apart.

``image_phash`` is the one definition: the filter stores its value in every sample and the dedup step
compares values computed here, so a written sample and a new copy of it hash the same. Inputs that are
not decodable images get no hash (the filter rejects them in the main pass).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.fft
from PIL import Image, ImageOps

from curation.config import Resources
from curation.records import Row
from curation.stages.base import Stage

PHASH_DRAFT_SIDE = 64  # the hash resizes to 32x32: twice that keeps the resampling from few pixels
PHASH_VIEW_SIDE = 32
PHASH_BAND = 8  # 8x8 lowest DCT frequencies: 64 bits
PHASH_WINDOW_SIGMA = 0.25  # of the side
DEFAULT_MAX_PIXELS = 178_956_970  # the filter's decompression-bomb guard (PIL's default limit)
NO_PIXEL_LIMIT = 1 << 62
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255, 255)

# One row per input of the hash pass (~100 bytes plus the source string).
HASH_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),  # read unit index << 32 | position in the unit: the input order
        ("key", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.binary(32)),  # null: not an image the pass could decode
        ("phash", pa.uint64()),
        ("pixels", pa.int64()),
    ]
)
POSITION_BITS = 32


def input_id(unit_index: int, position: int) -> int:
    """Order-preserving id of the ``position``-th input of read unit ``unit_index``."""
    return (unit_index << POSITION_BITS) | position


def split_input_id(value: int) -> tuple[int, int]:
    return value >> POSITION_BITS, value & ((1 << POSITION_BITS) - 1)


@dataclass(frozen=True)
class ImageHashes:
    phash: int  # 64 bits
    width: int  # upright, from the header
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_phash(data: bytes) -> str:
    """The pHash of an encoded image as 16 hex digits (what ``KEY.json`` and the index store).

    No pixel limit here: the filter calls it on images it has already accepted.
    """
    hashes = image_hashes(data, max_pixels=NO_PIXEL_LIMIT)
    if hashes is None:
        raise ValueError("not a decodable image")
    return phash_hex(hashes.phash)


def phash_hex(value: int) -> str:
    return f"{value:016x}"


def image_hashes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHashes | None:
    """pHash and upright size of an encoded image, or None when it cannot be decoded (or is over ``max_pixels``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb warnings: the explicit limit below decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # full resolution, as stored
            if width * height > max_pixels:
                return None
            image.draft("RGB", (PHASH_DRAFT_SIDE, PHASH_DRAFT_SIDE))  # JPEG only; a no-op for other formats
            image.load()
            upright = _upright(image)
            value = windowed_phash(gray_view(upright))
    except Exception:  # not an image, or damaged: no hash, the filter rejects it with its reason
        return None
    if upright.size != image.size:  # EXIF turned it a quarter: the sides swap
        width, height = height, width
    return ImageHashes(value, width, height)


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # unparsable EXIF: the filter ignores it too
        return image


def _window(side: int) -> np.ndarray:
    centres = (np.arange(side) + 0.5) / side - 0.5
    profile = np.exp(-0.5 * (centres / PHASH_WINDOW_SIGMA) ** 2)
    return np.outer(profile, profile)


_WINDOW = _window(PHASH_VIEW_SIDE)
_BIT_WEIGHTS = 1 << np.arange(PHASH_BAND * PHASH_BAND - 1, -1, -1, dtype=np.uint64)


def windowed_phash(gray: Image.Image) -> int:
    """64-bit centre-weighted pHash of an 8-bit gray image; bit 63 is the DC term (imagehash's bit order)."""
    pixels = np.asarray(gray.resize((PHASH_VIEW_SIDE, PHASH_VIEW_SIDE), Image.Resampling.LANCZOS), np.float64)
    weighted = (pixels - pixels.mean()) * _WINDOW
    low = scipy.fft.dct(scipy.fft.dct(weighted, axis=0), axis=1)[:PHASH_BAND, :PHASH_BAND].ravel()
    bits = (low > np.median(low)).astype(np.uint64)
    return int((bits * _BIT_WEIGHTS).sum())


def gray_view(image: Image.Image) -> Image.Image:
    """8-bit gray of any mode, transparency flattened on white as the filter stores it."""
    mode = image.mode
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        stretched = (values - low) * (255.0 / max(high - low, 1e-12))  # pHash ignores contrast and offset
        return Image.fromarray(np.clip(np.rint(stretched), 0, 255).astype(np.uint8), "L")
    if mode == "L":
        return image
    return image.convert("RGB").convert("L")


class HashStage(Stage):
    """Fills ``sha256`` (hex), ``phash`` (hex) and the upright header ``width`` / ``height`` of OK rows.

    Rows that are not decodable images keep ``phash`` empty; nothing is rejected here. The image bytes
    stay in the row (the pass turns rows into ``HASH_SCHEMA`` tables right after, in the same task).
    """

    name = "hash"

    def __init__(self, resources: Resources, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(resources)
        self.max_pixels = max_pixels

    def process_row(self, row: Row) -> None:
        data = row["image"] or b""
        hashes = image_hashes(data, self.max_pixels) if data else None
        if hashes is None:
            return
        row.update(
            sha256=hashlib.sha256(data).hexdigest(),
            phash=phash_hex(hashes.phash),
            width=hashes.width,
            height=hashes.height,
        )


def hash_table(rows: list[Row], ids: list[int]) -> pa.Table:
    """The small ``HASH_SCHEMA`` table of hashed rows (``ids`` from ``input_id``, one per row)."""
    hashed = [row.get("phash") is not None for row in rows]
    return pa.Table.from_pydict(
        {
            "id": ids,
            "key": [row["key"] for row in rows],
            "source": [row["source"] for row in rows],
            "sha256": [bytes.fromhex(row["sha256"]) if ok else None for row, ok in zip(rows, hashed, strict=True)],
            "phash": [int(row["phash"], 16) if ok else None for row, ok in zip(rows, hashed, strict=True)],
            "pixels": [row["width"] * row["height"] if ok else None for row, ok in zip(rows, hashed, strict=True)],
        },
        schema=HASH_SCHEMA,
    )
