import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.buckets import bucket_for
from curation.config import FilterConfig
from curation.records import FAILED, OK, REJECTED, new_row
from curation.stages.filter import REJECT_REASONS, FilterStage
from curation.stages.prepare import PrepareSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
BASE_SIZE = 512


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def run(data: bytes | None, **config) -> dict:
    stage = FilterStage(FilterConfig(**{"min_side": 32, **config}), PrepareSpec(BASE_SIZE))
    (row,) = stage.process_batch([new_row("k", "src", data)])
    return row


def stored(row: dict) -> Image.Image:
    image = Image.open(io.BytesIO(row["image"]))
    image.load()
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` but carries no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def assert_rejected(row: dict, reason: str) -> None:
    assert reason in REJECT_REASONS
    assert (row["status"], row["stage"], row["reason"]) == (REJECTED, "filter", reason), row["detail"]
    assert row["image"] is None and row["detail"]


# ------------------------------------------------------------------ rejections


def test_empty_input_is_rejected():
    assert_rejected(run(b""), "empty")
    assert_rejected(run(None), "empty")


def test_file_over_max_bytes_is_rejected_before_decoding():
    row = run(encode(noise(64, 64), "PNG"), max_bytes=100)
    assert_rejected(row, "file_size")
    assert "> max 100" in row["detail"]


def test_non_image_bytes_are_rejected():
    assert_rejected(run(b"just some text, not pixels"), "not_an_image")


def test_pixel_count_above_the_limit_is_a_decompression_bomb():
    row = run(encode(noise(200, 100), "PNG"), max_pixels=10_000)
    assert_rejected(row, "decompression_bomb")
    assert "200x100" in row["detail"]


def test_bomb_is_caught_from_the_header_without_decoding():
    # 40000 x 40000 would need ~4.8 GB decoded; the header alone must be enough to refuse it.
    assert_rejected(run(png_header_only(40_000, 40_000)), "decompression_bomb")
    assert_rejected(run(png_header_only(3_000, 3_000), max_pixels=1_000_000), "decompression_bomb")


def test_truncated_image_is_rejected():
    data = encode(noise(128, 128), "JPEG", quality=95)
    assert_rejected(run(data[: len(data) // 2]), "truncated")


def test_corrupt_pixel_data_is_rejected():
    data = bytearray(encode(noise(64, 64), "PNG"))
    start = data.index(b"IDAT") + 14
    data[start : start + 50] = bytes(byte ^ 0xFF for byte in data[start : start + 50])
    assert_rejected(run(bytes(data)), "corrupt")


def test_too_small_is_rejected_with_a_readable_detail():
    row = run(encode(noise(40, 100), "PNG"), min_side=64)
    assert_rejected(row, "too_small")
    assert row["detail"] == "min side 40 < 64"


def test_too_small_holds_for_the_upright_image():
    # 100x40 stored, rotated by EXIF: min side is 40 either way.
    data = encode(noise(100, 40), "JPEG", exif=exif_orientation(6))
    assert_rejected(run(data, min_side=64), "too_small")


def test_extreme_aspect_ratio_is_rejected():
    assert_rejected(run(encode(noise(500, 100), "PNG"), max_aspect_ratio=4.0), "aspect_ratio")
    assert run(encode(noise(400, 100), "PNG"), max_aspect_ratio=4.0)["status"] == OK


def test_rows_that_are_not_ok_pass_through_untouched():
    stage = FilterStage(FilterConfig(), PrepareSpec(BASE_SIZE))
    row = new_row("k", "src", None)
    row.update(status=FAILED, stage="read", reason="error")
    assert stage.process_batch([row]) == [row] and row["reason"] == "error"


# ------------------------------------------------------------------ kept and converted images


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_plain_rgb_images_keep_their_original_bytes(fmt, ext):
    data = encode(noise(120, 80), fmt)
    row = run(data)
    assert row["status"] == OK
    assert (row["image"], row["image_ext"], json.loads(row["filter_notes"])) == (data, ext, {})
    assert (row["width"], row["height"]) == (120, 80)


def test_exif_rotation_is_applied_and_reencoded():
    stored_pixels = Image.new("RGB", (60, 100), (0, 0, 255))
    stored_pixels.paste((255, 0, 0), (0, 0, 20, 20))  # marker at the stored top-left
    row = run(encode(stored_pixels, "JPEG", quality=95, exif=exif_orientation(6)))
    assert (row["width"], row["height"], row["image_ext"]) == (100, 60, "png")
    assert json.loads(row["filter_notes"]) == {"exif_transpose": 6, "reencoded": "png"}
    upright = stored(row)
    assert upright.size == (100, 60)
    assert upright.getexif().get(0x0112, 1) == 1
    red, _, blue = upright.getpixel((95, 5))  # orientation 6 turns the stored top-left into the top-right
    assert red > 200 and blue < 60


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # full magenta + yellow: red
    row = run(encode(cmyk, "JPEG", quality=95))
    assert json.loads(row["filter_notes"]) == {"mode": "CMYK->RGB", "reencoded": "png"}
    image = stored(row)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((32, 32))
    assert red > 230 and green < 30 and blue < 30


def test_rgba_is_flattened_onto_white():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 0))  # fully transparent blue
    rgba.paste((255, 0, 0, 255), (32, 0, 64, 64))  # opaque red right half
    row = run(encode(rgba, "PNG"))
    image = stored(row)
    assert (image.mode, row["image_ext"]) == ("RGB", "png")
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((50, 5)) == (255, 0, 0)
    assert json.loads(row["filter_notes"])["mode"] == "RGBA->RGB"


def test_palette_with_transparency_is_flattened_and_without_keeps_colors():
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(0, (0, 0, 16, 16))
    opaque = stored(run(encode(palette, "PNG")))
    assert opaque.getpixel((40, 40)) == (10, 200, 30) and opaque.getpixel((5, 5)) == (0, 0, 0)
    transparent = stored(run(encode(palette, "PNG", transparency=0)))
    assert transparent.getpixel((5, 5)) == (255, 255, 255)
    assert transparent.getpixel((40, 40)) == (10, 200, 30)


def test_16_bit_grayscale_is_scaled_to_8_bit():
    values = np.zeros((64, 64), dtype=np.uint16)
    values[:, 16:32], values[:, 32:] = 32896, 65535
    row = run(encode(Image.fromarray(values), "PNG"))
    image = stored(row)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in (0, 20, 40)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    assert json.loads(row["filter_notes"])["mode"] == "I;16->RGB"


def test_grayscale_jpeg_becomes_rgb_png():
    row = run(encode(noise(64, 64).convert("L"), "JPEG"))
    assert (stored(row).mode, row["image_ext"]) == ("RGB", "png")


def test_animated_image_keeps_its_first_frame():
    frames = [Image.new("RGB", (64, 48), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    row = run(data)
    assert json.loads(row["filter_notes"])["frames"] == 3
    assert stored(row).getpixel((10, 10)) == (255, 0, 0)


def test_hashes_and_bucket_are_set():
    data = encode(noise(300, 200), "JPEG")
    row = run(data)
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(row["phash"]) == 16 and int(row["phash"], 16) >= 0
    assert (row["bucket"], row["bucket_h"], row["bucket_w"]) == ("0.68", 416, 608)  # PixArt's 512 table


def test_bucket_follows_the_upright_shape():
    tall = run(encode(noise(100, 300), "PNG"))
    bucket, (bucket_h, bucket_w) = bucket_for(300, 100, BASE_SIZE)
    assert (tall["bucket"], tall["bucket_h"], tall["bucket_w"]) == (bucket, bucket_h, bucket_w)
    assert tall["bucket_h"] > tall["bucket_w"]


def test_sha256_is_of_the_input_even_when_reencoded():
    data = encode(noise(64, 64).convert("L"), "PNG")
    row = run(data)
    assert row["image"] != data and row["sha256"] == hashlib.sha256(data).hexdigest()


def test_unknown_base_size_is_refused_at_construction():
    with pytest.raises(ValueError, match="aspect-ratio table"):
        FilterStage(FilterConfig(), PrepareSpec(300))


# ------------------------------------------------------------------ the demo folder

EXPECTED_DEMO_REJECTIONS = {
    "broken_truncated.jpg": "truncated",
    "broken_zero.jpg": "empty",
    "not_an_image.png": "not_an_image",
    "broken_header.webp": "not_an_image",
    "microaneurysms_tiny.png": "too_small",
    "retina_strip_6x1.jpg": "aspect_ratio",
}


def test_every_demo_image_gets_the_expected_outcome():
    paths = sorted(p for p in EXAMPLES.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    stage = FilterStage(FilterConfig(min_side=128), PrepareSpec(BASE_SIZE))
    rows = stage.process_batch([new_row(p.name, str(p), p.read_bytes()) for p in paths])
    outcomes = {row["key"]: row["reason"] if row["status"] != OK else OK for row in rows}
    assert {name: reason for name, reason in outcomes.items() if reason != OK} == EXPECTED_DEMO_REJECTIONS
    assert sum(reason == OK for reason in outcomes.values()) >= 20
    assert all(row["status"] != FAILED for row in rows)
