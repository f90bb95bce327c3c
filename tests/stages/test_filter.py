import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError

from curation.buckets import bucket_for
from curation.config import FilterConfig
from curation.io.layout import FILTER_VALUE_TYPES, INDEX_SCHEMA
from curation.io.writer import index_record, sample_metadata
from curation.records import FAILED, OK, REJECTED, new_row
from curation.stages.filter import FILTER_VALUE_NAMES, REJECT_REASONS, FilterStage
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
    """Filter one input; the content rules are off unless a test sets them (most tests use flat colours)."""
    defaults = {"min_side": 32, "min_gray_std": 0, "min_laplacian_var": 0}
    stage = FilterStage(FilterConfig(**{**defaults, **config}), PrepareSpec(BASE_SIZE))
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
    "retina_strip_6x1.jpg": "aspect_ratio",  # 6:1 > 4.5
}


def test_every_demo_image_gets_the_expected_outcome():
    """With the demo recipe's filter settings and every content rule at its default."""
    paths = sorted(p for p in EXAMPLES.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    stage = FilterStage(FilterConfig(min_side=128, max_aspect_ratio=4.5), PrepareSpec(256, caption_max_side=512))
    rows = stage.process_batch([new_row(p.name, str(p), p.read_bytes()) for p in paths])
    outcomes = {row["key"]: row["reason"] if row["status"] != OK else OK for row in rows}
    assert {name: reason for name, reason in outcomes.items() if reason != OK} == EXPECTED_DEMO_REJECTIONS
    # 20 photos + the near-duplicate astronaut (dedup, not the filter, removes it)
    assert sum(reason == OK for reason in outcomes.values()) == len(paths) - len(EXPECTED_DEMO_REJECTIONS) == 21
    assert all(row["status"] != FAILED for row in rows)


# ------------------------------------------------------------------ configurable rules, measured values


def gray_png(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.uint8), "L"), "PNG")


def checkerboard(size: int) -> np.ndarray:
    """0 / 255 alternating pixels."""
    return (np.indices((size, size)).sum(axis=0) % 2) * 255


def values_of(row: dict) -> dict:
    assert row["status"] == OK, row["detail"]
    return json.loads(row["filter_values"])


def test_every_issue_reason_code_is_exported():
    issue_codes = {
        "not_an_image", "unsupported_format", "too_small", "too_few_pixels", "too_many_pixels", "aspect_ratio",
        "file_size", "format_not_allowed", "blank", "blurry", "animated", "transparent", "grayscale",
        "empty", "truncated", "corrupt", "decompression_bomb", "unsupported_mode",
    }  # fmt: skip
    assert set(REJECT_REASONS) == issue_codes and len(REJECT_REASONS) == len(issue_codes)


def test_measured_values_of_a_kept_image():
    data = encode(noise(120, 80), "PNG")
    values = values_of(run(data))
    assert tuple(sorted(values)) == tuple(sorted(FILTER_VALUE_NAMES)) == tuple(sorted(FILTER_VALUE_TYPES))
    expected = {"file_bytes": len(data), "pixels": 9600, "min_side": 80, "aspect_ratio": 1.5, "frames": 1}
    assert {name: values[name] for name in expected} == expected
    assert values["transparent_fraction"] == 0.0


def test_checkerboard_has_the_analytic_laplacian_variance_and_std():
    # Interior pixels of a 0/255 checkerboard: Laplacian +-4*255, as many of each (62*62 is even): var 1020^2.
    values = values_of(run(gray_png(checkerboard(64))))
    assert (values["laplacian_var"], values["gray_std"], values["chroma"]) == (1020.0**2, 127.5, 0)


def test_constant_image_is_blank_with_zero_std():
    row = run(gray_png(np.full((64, 64), 90)), min_gray_std=2)
    assert_rejected(row, "blank")
    assert row["detail"] == "gray std 0.0000 < min 2 (view 64x64)"


def test_blank_rule_is_measured_on_a_view_of_at_most_256_pixels():
    row = run(encode(Image.new("RGB", (1000, 500), (10, 20, 30)), "PNG"), min_gray_std=2)
    assert_rejected(row, "blank")
    assert row["detail"].endswith("(view 256x128)")


def test_a_smooth_ramp_is_blurry_but_not_blank():
    ramp = np.tile(np.arange(64) * 4, (64, 1))  # linear: the Laplacian is 0 everywhere inside
    row = run(gray_png(ramp), min_gray_std=2, min_laplacian_var=5)
    assert_rejected(row, "blurry")
    assert row["detail"] == "laplacian variance 0.0000 < min 5 (view 64x64)"
    assert run(gray_png(ramp), min_gray_std=2, min_laplacian_var=0)["status"] == OK


def test_laplacian_variance_matches_an_independent_computation_on_noise():
    gray = np.random.default_rng(5).integers(0, 256, (50, 70))
    # scipy-free reference: convolve with the 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]] by explicit loops
    reference = [
        gray[i - 1, j] + gray[i + 1, j] + gray[i, j - 1] + gray[i, j + 1] - 4 * gray[i, j]
        for i in range(1, 49)
        for j in range(1, 69)
    ]
    assert values_of(run(gray_png(gray)))["laplacian_var"] == round(float(np.var(reference)), 4)


def test_transparent_fraction_is_one_minus_mean_alpha():
    rgba = Image.new("RGBA", (64, 64), (200, 10, 10, 51))  # alpha 51 everywhere: 1 - 51/255 = 0.8
    row = run(encode(rgba, "PNG"), max_transparent_fraction=0.75)
    assert_rejected(row, "transparent")
    assert row["detail"] == "transparent fraction 0.8000 > max 0.75"
    assert values_of(run(encode(rgba, "PNG")))["transparent_fraction"] == 0.8


def test_too_few_pixels():
    data = encode(noise(100, 50), "PNG")
    row = run(data, min_pixels=5001)
    assert_rejected(row, "too_few_pixels")
    assert row["detail"] == "100x50 = 5000 pixels < min 5001"
    assert run(data, min_pixels=5000)["status"] == OK


def test_too_many_pixels_rejected_by_policy():
    row = run(encode(noise(200, 100), "PNG"), max_train_pixels=19_999, too_many_pixels_policy="reject")
    assert_rejected(row, "too_many_pixels")
    assert row["detail"] == "200x100 = 20000 pixels > max_train_pixels 19999"


def test_too_many_pixels_downscaled_to_a_lossless_png():
    original = noise(200, 100)
    row = run(encode(original, "PNG"), max_train_pixels=5_000)  # scale sqrt(5000 / 20000) = 0.5
    assert (row["width"], row["height"], row["image_ext"]) == (100, 50, "png")
    assert json.loads(row["filter_notes"]) == {"downscaled": "200x100->100x50", "reencoded": "png"}
    assert values_of(row)["pixels"] == 20_000
    expected = np.asarray(original.resize((100, 50), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(stored(row)), expected)


def test_downscale_follows_the_upright_orientation():
    data = encode(noise(200, 100), "JPEG", exif=exif_orientation(6))  # upright 100 x 200
    row = run(data, max_train_pixels=5_000)
    assert (row["width"], row["height"]) == (50, 100) == stored(row).size
    assert json.loads(row["filter_notes"])["downscaled"] == "100x200->50x100"


def test_the_bomb_guard_is_separate_from_the_training_cap():
    data = encode(noise(200, 100), "PNG")
    assert_rejected(run(data, max_pixels=19_999, max_train_pixels=100), "decompression_bomb")


def test_format_allow_list():
    webp = encode(noise(64, 64), "WEBP")
    row = run(webp, allowed_formats=["jpg", "png"])
    assert_rejected(row, "format_not_allowed")
    assert row["detail"] == "format WEBP not in allowed_formats ['JPEG', 'PNG']"
    assert run(webp, allowed_formats=["WebP"])["status"] == OK
    with pytest.raises(ValidationError, match="unknown image formats"):
        FilterConfig(allowed_formats=["jpeg", "nope"])


def test_animated_policy_reject():
    frames = [noise(64, 48, seed) for seed in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    row = run(data, animated_policy="reject")
    assert_rejected(row, "animated")
    assert row["detail"] == "3 frames (animated_policy=reject)"


def test_grayscale_policy():
    gray = encode(noise(64, 64).convert("L"), "PNG")
    assert values_of(run(gray))["chroma"] == 0
    row = run(gray, grayscale_policy="reject")
    assert_rejected(row, "grayscale")
    assert row["detail"] == "chroma 0 <= grayscale_max_chroma 2"
    color = np.full((64, 64, 3), 100, dtype=np.uint8)
    color[10, 10] = (100, 103, 100)  # a single pixel 3 levels off gray makes it a colour image
    assert values_of(run(encode(Image.fromarray(color), "PNG"), grayscale_policy="reject"))["chroma"] == 3


def test_a_missing_decoder_is_an_unsupported_format(monkeypatch):
    data = encode(noise(64, 64), "JPEG2000")
    monkeypatch.delattr(Image.core, "jpeg2k_decoder")  # a Pillow built without OpenJPEG
    row = run(data)
    assert_rejected(row, "unsupported_format")
    assert row["detail"] == "JPEG2000: OSError: decoder jpeg2k not available"


def test_avif_without_libavif_is_an_unsupported_format(monkeypatch):
    avif_plugin = pytest.importorskip("PIL.AvifImagePlugin")
    if not avif_plugin.SUPPORTED:
        pytest.skip("this Pillow cannot write AVIF to build the input")
    data = encode(noise(64, 64), "AVIF")
    monkeypatch.setattr(avif_plugin, "SUPPORTED", False)  # a Pillow built without libavif
    row = run(data)
    assert_rejected(row, "unsupported_format")
    assert "AVIF support" in row["detail"]  # Pillow says "not installed"; without its hint, ours says "built without"


def test_measured_values_reach_the_sample_json_and_the_index():
    row = run(encode(noise(120, 80), "PNG"))
    row.update(captions=json.dumps({"dense": "noise"}))
    values = values_of(row)
    assert sample_metadata(row)["filter_values"] == values
    index = pa.Table.from_pylist([index_record(row, "s.tar")], schema=INDEX_SCHEMA).to_pylist()[0]
    assert {name: index[f"filter_{name}"] for name in FILTER_VALUE_NAMES} == values
