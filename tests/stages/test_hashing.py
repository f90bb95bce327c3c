"""The hash pass: copies of real photos land within the dedup radius, distinct photos far outside it."""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from curation.config import Resources
from curation.records import OK, new_row
from curation.stages.hashing import HASH_SCHEMA, HashStage, hash_table, image_hashes, image_phash, input_id

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
RADIUS = 6  # DedupConfig.near_duplicate_radius's default
# Natural photos (fine periodic textures such as brick.jpg can move 8-10 bits under a 2% corner crop).
PHOTOS = [
    "astronaut.jpg",
    "coffee_exif6.jpg",
    "rocket.jpg",
    "retina.jpg",
    "hubble_wide.webp",
    "ihc_16x9.jpg",
    "coins.png",
    "nested/chelsea.webp",
    "nested/clock.jpg",
    "nested/cell.webp",
]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def upright_rgb(name: str) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(EXAMPLES / name)).convert("RGB")


def exif_rotated(image: Image.Image, orientation: int) -> bytes:
    """A JPEG stored turned, with the EXIF orientation that turns it back to ``image``."""
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image.transpose(stored[orientation]), "JPEG", quality=90, exif=exif.tobytes())


def cropped(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def copies(image: Image.Image) -> dict[str, bytes]:
    """Re-encoded, resized, format-converted, EXIF-rotated and <= 2%-per-side cropped copies."""
    w, h = image.size
    made = {
        "jpeg_q30": encode(image, "JPEG", quality=30),
        "jpeg_q95": encode(image, "JPEG", quality=95),
        "png": encode(image, "PNG"),
        "webp": encode(image, "WEBP", quality=80),
        "half_png": encode(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"),
        "quarter_jpeg": encode(image.resize((w // 4, h // 4), Image.Resampling.BICUBIC), "JPEG", quality=85),
        "x1.5_jpeg": encode(image.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC), "JPEG", quality=90),
    }
    made.update({f"exif{o}": exif_rotated(image, o) for o in (3, 6, 8)})
    crops = {
        "all": (0.02, 0.02, 0.02, 0.02),
        "left": (0.02, 0, 0, 0),
        "top": (0, 0.02, 0, 0),
        "right_bottom": (0, 0, 0.02, 0.02),
        "left_top": (0.02, 0.02, 0, 0),
        "mixed": (0.01, 0.02, 0.015, 0.005),
    }
    made.update({f"crop_{n}": encode(cropped(image, *box), "JPEG", quality=92) for n, box in crops.items()})
    return made


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@pytest.mark.parametrize("name", PHOTOS)
def test_copies_of_a_photo_are_within_the_radius(name):
    original = image_hashes((EXAMPLES / name).read_bytes()).phash
    distances = {kind: hamming(original, image_hashes(data).phash) for kind, data in copies(upright_rgb(name)).items()}
    assert max(distances.values()) <= RADIUS, distances


def test_distinct_photos_are_far_apart():
    hashes = {name: image_hashes((EXAMPLES / name).read_bytes()).phash for name in PHOTOS}
    closest = min(hamming(hashes[a], hashes[b]) for a, b in itertools.combinations(PHOTOS, 2))
    assert closest > 2 * RADIUS + 2


def test_image_phash_is_sixteen_hex_digits_of_the_hash():
    data = (EXAMPLES / "rocket.jpg").read_bytes()
    assert image_phash(data) == f"{image_hashes(data).phash:016x}"
    assert len(image_phash(data)) == 16
    with pytest.raises(ValueError):
        image_phash(b"not an image")


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_hash_stage_fills_digest_and_upright_header_size_of_images_only():
    photo = (EXAMPLES / "coffee_exif6.jpg").read_bytes()
    stored_w, stored_h = Image.open(io.BytesIO(photo)).size
    rows = [
        new_row("photo", "src/photo", photo),
        new_row("text", "src/text", b"hello, not an image"),
        new_row("bomb", "src/bomb", png_header_only(30_000, 30_000)),
        new_row("cut", "src/cut", photo[: len(photo) // 3]),
    ]
    HashStage(Resources(), max_pixels=100_000_000).process_batch(rows)
    photo_row, *others = rows
    assert photo_row["sha256"] == hashlib.sha256(photo).hexdigest()
    assert (photo_row["width"], photo_row["height"]) == (stored_h, stored_w)  # EXIF 6: a quarter turn
    assert photo_row["phash"] == image_phash(photo)
    for row in others:
        assert (row["status"], row["sha256"], row["phash"], row["width"]) == (OK, None, None, None), row["key"]


def test_hash_table_keeps_one_small_row_per_input():
    photo = (EXAMPLES / "rocket.jpg").read_bytes()
    rows = [new_row("a", "src/a", photo), new_row("b", "src/b", b"x")]
    HashStage(Resources()).process_batch(rows)
    table = hash_table(rows, [input_id(2, 0), input_id(2, 1)])
    assert table.schema == HASH_SCHEMA
    width, height = Image.open(io.BytesIO(photo)).size
    assert table.to_pylist() == [
        {
            "id": (2 << 32) | 0,
            "key": "a",
            "source": "src/a",
            "sha256": hashlib.sha256(photo).digest(),
            "phash": int(image_phash(photo), 16),
            "pixels": width * height,
        },
        {"id": (2 << 32) | 1, "key": "b", "source": "src/b", "sha256": None, "phash": None, "pixels": None},
    ]
