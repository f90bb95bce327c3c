"""A corpus of broken and odd files made here (truncations, flipped bytes, forged headers, bomb dimensions,
every mode and EXIF orientation, animations, many formats, non-images, blank / blurry / tiny / huge images):
each file gets exactly one outcome, kept (with the stored extension and upright size) or rejected with its
fixed reason code."""

from __future__ import annotations

import functools
import io
import json
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageFilter, features

from curation.config import FilterConfig
from curation.records import OK, REJECTED, new_row
from curation.stages.filter import FILTER_VALUE_NAMES, REJECT_REASONS, FilterStage
from curation.stages.prepare import PrepareSpec

W, H = 96, 64  # upright size of most corpus images: quadrants of 48x32, multiples of the 16-pixel JPEG MCU
QUADRANTS = {(0, 0): (220, 30, 30), (1, 0): (30, 200, 40), (0, 1): (40, 50, 210), (1, 1): (250, 250, 250)}
TRAIN_CAP = 3_000_000  # corpus max_train_pixels: 2000x1500 fits exactly, 4000x3000 is halved
CONFIG = FilterConfig(min_side=32, max_train_pixels=TRAIN_CAP)


@dataclass(frozen=True)
class Kept:
    ext: str
    size: tuple[int, int]


@dataclass(frozen=True)
class Rejected:
    reason: str


# ------------------------------------------------------------------ building blocks


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 1)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def quadrants(width: int = W, height: int = H) -> np.ndarray:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for (column, row), color in QUADRANTS.items():
        pixels[row * height // 2 : (row + 1) * height // 2, column * width // 2 : (column + 1) * width // 2] = color
    return pixels


def checks(width: int, height: int) -> Image.Image:
    """A checkerboard of 50-pixel cells: detail that survives a downscale, and compact as JPEG."""
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    gray = (((x // 50 + y // 50) % 2) * 200 + 30).astype(np.uint8)
    return Image.fromarray(np.broadcast_to(gray, (height, width)).copy(), "L").convert("RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_from_raw(width: int, height: int, depth: int, color_type: int, rows: list[bytes]) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def png_rgb16() -> bytes:
    """16 bits per channel RGB, which Pillow reads but cannot write."""
    values = np.asarray(noise(W, H, 3), dtype=">u2") * 257
    return png_from_raw(W, H, 16, 2, [row.tobytes() for row in values])


def psd(image: Image.Image) -> bytes:
    """Minimal Photoshop file (Pillow reads PSD but cannot write it): header, empty sections, raw planes."""
    pixels = np.asarray(image.convert("RGB"))
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, image.height, image.width, 8, 3)
    planes = b"".join(pixels[..., channel].tobytes() for channel in range(3))
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the dimensions in its SOF0 header replaced (a tiny file declaring a huge image)."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def gif_declaring(width: int, height: int) -> bytes:
    """A 1-pixel GIF whose logical screen claims ``width`` x ``height``."""
    gif = encode(Image.new("L", (1, 1)), "GIF")
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def flip(data: bytes, start: int, count: int) -> bytes:
    out = bytearray(data)
    out[start : start + count] = bytes(byte ^ 0xFF for byte in out[start : start + count])
    return bytes(out)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


# The stored pixels for each EXIF orientation, from the EXIF spec's meaning of the tag (how the stored
# rows must be turned to be displayed): stored = inverse of that turn applied to the upright image.
STORED_FROM_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # displayed = mirrored left-right
    3: lambda a: a[::-1, ::-1],  # displayed = turned 180
    4: lambda a: a[::-1, :],  # displayed = mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # displayed = mirrored along the main diagonal
    6: lambda a: np.rot90(a, 1),  # displayed = stored turned 90 clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # displayed = mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, -1),  # displayed = stored turned 90 counter-clockwise
}


def exif_rotated(orientation: int) -> bytes:
    stored = np.ascontiguousarray(STORED_FROM_UPRIGHT[orientation](quadrants()))
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif(orientation))


def animated(fmt: str, **options) -> bytes:
    frames = [Image.fromarray(quadrants()), noise(W, H, 1), noise(W, H, 2)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


# ------------------------------------------------------------------ the corpus


@functools.cache
def corpus() -> dict[str, tuple[bytes, Kept | Rejected]]:
    photo = Image.fromarray(quadrants())
    jpeg = encode(noise(W, H), "JPEG", quality=95)
    png = encode(noise(W, H), "PNG")
    kept_png = Kept("png", (W, H))
    cases: dict[str, tuple[bytes, Kept | Rejected]] = {
        # truncations: inside the header, in the pixel data, just before the end marker
        "jpeg_cut_2.jpg": (jpeg[:2], Rejected("truncated")),
        "jpeg_cut_20.jpg": (jpeg[:20], Rejected("truncated")),
        "jpeg_cut_300.jpg": (jpeg[:300], Rejected("truncated")),
        "jpeg_cut_half.jpg": (jpeg[: len(jpeg) // 2], Rejected("truncated")),
        "jpeg_cut_90pct.jpg": (jpeg[: len(jpeg) * 9 // 10], Rejected("truncated")),
        "png_cut_8.png": (png[:8], Rejected("truncated")),
        "png_cut_20.png": (png[:20], Rejected("truncated")),
        "png_cut_half.png": (png[: len(png) // 2], Rejected("truncated")),
        "png_cut_90pct.png": (png[: len(png) * 9 // 10], Rejected("truncated")),
        "gif_cut_half.gif": (encode(noise(W, H), "GIF")[:1500], Rejected("truncated")),
        "webp_cut_half.webp": (encode(noise(W, H), "WEBP")[:2000], Rejected("truncated")),
        # flipped bytes
        "png_flipped_idat.png": (flip(png, png.index(b"IDAT") + 14, 50), Rejected("corrupt")),
        "png_flipped_ihdr.png": (flip(png, 18, 1), Rejected("corrupt")),
        "png_flipped_signature.png": (flip(png, 1, 1), Rejected("not_an_image")),
        "jpeg_flipped_sof.jpg": (flip(jpeg, jpeg.index(b"\xff\xc0") + 1, 1), Rejected("corrupt")),
        # forged headers
        "png_signature_garbage.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(7, 250)), Rejected("corrupt")),
        "jpeg_soi_garbage.jpg": (b"\xff\xd8" + bytes(range(7, 250)), Rejected("corrupt")),
        "riff_webp_garbage.webp": (b"RIFF\x00\x01\x00\x00WEBP" + bytes(range(7, 250)), Rejected("corrupt")),
        # bomb dimensions: a few bytes declaring billions of pixels
        "bomb_png.png": (png_header(40_000, 40_000), Rejected("decompression_bomb")),
        "bomb_gif.gif": (gif_declaring(65_535, 65_535), Rejected("decompression_bomb")),
        "bomb_jpeg.jpg": (with_sof_size(jpeg, 30_000, 30_000), Rejected("decompression_bomb")),
        # modes
        "cmyk.jpg": (encode(noise(W, H).convert("CMYK"), "JPEG"), kept_png),
        "gray16.png": (encode(Image.fromarray(np.asarray(noise(W, H, mode="L"), np.uint16) * 257), "PNG"), kept_png),
        "rgb16.png": (png_rgb16(), kept_png),
        "palette_transparency.png": (encode(noise(W, H).quantize(16), "PNG", transparency=0), kept_png),
        "gray_alpha.png": (encode(noise(W, H, mode="L").convert("LA"), "PNG"), kept_png),
        "bilevel.png": (encode(noise(W, H, mode="L").convert("1"), "PNG"), kept_png),
        "rgba_invisible.png": (encode(Image.new("RGBA", (W, H), (9, 9, 9, 0)), "PNG"), Rejected("transparent")),
        # EXIF orientations (the upright image is W x H for all eight)
        "exif_1.jpg": (exif_rotated(1), Kept("jpg", (W, H))),
        **{f"exif_{value}.jpg": (exif_rotated(value), kept_png) for value in range(2, 9)},
        # animations: first frame kept
        "animated.gif": (animated("GIF"), kept_png),
        "animated.webp": (animated("WEBP", lossless=True), kept_png),
        "animated_apng.png": (animated("PNG"), kept_png),
        "animated_cut_tail.gif": (animated("GIF")[:-200], kept_png),  # the first frame is whole: it is used
        # formats outside jpg/png/webp are stored as lossless PNG; jpg/png/webp keep their bytes
        "photo.webp": (encode(photo, "WEBP", quality=90), Kept("webp", (W, H))),
        "jpeg2000.jp2": (encode(photo, "JPEG2000"), kept_png),
        "targa.tga": (encode(photo, "TGA"), kept_png),
        "tiff.tif": (encode(photo, "TIFF"), kept_png),
        "bitmap.bmp": (encode(photo, "BMP"), kept_png),
        "icon.ico": (encode(Image.fromarray(quadrants(64, 64)), "ICO", sizes=[(64, 64)]), Kept("png", (64, 64))),
        "photoshop.psd": (psd(photo), kept_png),
        "directdraw.dds": (encode(photo, "DDS"), kept_png),
        "single.gif": (encode(photo, "GIF"), kept_png),
        "netpbm.ppm": (encode(photo, "PPM"), kept_png),
        "qoi.qoi": (encode(photo, "QOI"), kept_png),
        "silicon.sgi": (encode(photo, "SGI"), kept_png),
        "paintbrush.pcx": (encode(photo, "PCX"), kept_png),
        # wrong extensions: the content decides
        "png_named.jpg": (png, Kept("png", (W, H))),
        "jpeg_named.png": (jpeg, Kept("jpg", (W, H))),
        "gif_named.webp": (encode(photo, "GIF"), kept_png),
        # not images, or formats this Pillow cannot decode
        "empty.jpg": (b"", Rejected("empty")),
        "readme.txt": (b"# Photos\n\nTaken in 2024 by the team.\n", Rejected("not_an_image")),
        "doc.pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", Rejected("not_an_image")),
        "archive.zip": (zip_bytes(), Rejected("not_an_image")),
        "page.html": (b"<!doctype html><html><body><img src='a.jpg'></body></html>", Rejected("not_an_image")),
        "phone.heic": (
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
            Rejected("unsupported_format"),
        ),
        "next.jxl": (b"\xff\x0a" + bytes(64), Rejected("unsupported_format")),
        "weather.bufr": (b"BUFR" + bytes(64), Rejected("unsupported_format")),
        # content rules and sizes
        "blank_white.png": (encode(Image.new("RGB", (W, H), (255, 255, 255)), "PNG"), Rejected("blank")),
        "blank_gray.jpg": (encode(Image.new("RGB", (W, H), (128, 128, 128)), "JPEG"), Rejected("blank")),
        "blurry.png": (encode(noise(W, H).filter(ImageFilter.GaussianBlur(12)), "PNG"), Rejected("blurry")),
        "tiny.png": (encode(noise(16, 16), "PNG"), Rejected("too_small")),
        "strip.png": (encode(noise(400, 40), "PNG"), Rejected("aspect_ratio")),
        "huge_legal.jpg": (encode(checks(2000, 1500), "JPEG", quality=80), Kept("jpg", (2000, 1500))),
        "over_training_cap.jpg": (encode(checks(4000, 3000), "JPEG", quality=80), Kept("png", (2000, 1500))),
    }
    if shutil.which("gs") is None:  # without Ghostscript, Pillow identifies EPS but cannot render it
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n"
        cases["drawing.eps"] = (eps, Rejected("unsupported_format"))
    if features.check("avif"):
        cases["photo.avif"] = (encode(photo, "AVIF", quality=90), kept_png)
    return cases


def png_header(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buffer.getvalue()


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[bytes, Kept | Rejected, dict]]:
    cases = corpus()
    stage = FilterStage(CONFIG, PrepareSpec(512))
    rows = stage.process_batch([new_row(name, f"corpus/{name}", data) for name, (data, _) in cases.items()])
    return {row["key"]: (cases[row["key"]][0], cases[row["key"]][1], row) for row in rows}


def outcome(row: dict) -> Kept | Rejected:
    if row["status"] == OK:
        return Kept(row["image_ext"], (row["width"], row["height"]))
    assert row["status"] == REJECTED and row["stage"] == "filter", (row["status"], row["reason"], row["detail"])
    return Rejected(row["reason"])


def test_the_corpus_is_big_enough():
    cases = corpus()
    assert len(cases) >= 40
    assert sum(isinstance(expected, Rejected) for _, expected in cases.values()) >= 30


def test_every_file_gets_its_expected_outcome(outcomes):
    got = {name: outcome(row) for name, (_, _, row) in outcomes.items()}
    wrong = {
        name: (got[name], expected, row["detail"])
        for name, (_, expected, row) in outcomes.items()
        if got[name] != expected
    }
    assert not wrong, wrong


def test_rejections_use_fixed_codes_and_say_what_was_measured(outcomes):
    for name, (_, _, row) in outcomes.items():
        if row["status"] == REJECTED:
            assert row["reason"] in REJECT_REASONS, name
            assert row["detail"], name
            assert row["image"] is None and row["vae_pixels"] is None, name


def test_kept_files_are_upright_rgb_with_their_measured_values(outcomes):
    for name, (data, expected, row) in outcomes.items():
        if not isinstance(expected, Kept):
            continue
        image = Image.open(io.BytesIO(row["image"]))
        image.load()
        assert (image.mode, image.size) == ("RGB", expected.size), name
        values = json.loads(row["filter_values"])
        assert tuple(sorted(values)) == tuple(sorted(FILTER_VALUE_NAMES)), name
        assert values["file_bytes"] == len(data), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(outcomes, orientation):
    _, _, row = outcomes[f"exif_{orientation}.jpg"]
    image = Image.open(io.BytesIO(row["image"])).convert("RGB")
    for (column, line), color in QUADRANTS.items():
        centre = (column * W // 2 + W // 4, line * H // 2 + H // 4)
        assert np.abs(np.subtract(image.getpixel(centre), color)).max() <= 12, (orientation, centre)
    notes = json.loads(row["filter_notes"])
    assert notes.get("exif_transpose", 1) == orientation


def test_animations_keep_their_first_frame(outcomes):
    for name in ("animated.gif", "animated.webp", "animated_apng.png"):
        _, _, row = outcomes[name]
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        assert json.loads(row["filter_notes"])["frames"] == 3, name
        assert json.loads(row["filter_values"])["frames"] == 3, name
        assert np.abs(np.subtract(image.getpixel((W // 4, H // 4)), QUADRANTS[(0, 0)])).max() <= 12, name


def test_lossless_formats_are_stored_pixel_exact(outcomes):
    upright = quadrants()
    for name in ("targa.tga", "tiff.tif", "bitmap.bmp", "photoshop.psd", "directdraw.dds", "netpbm.ppm", "qoi.qoi"):
        _, _, row = outcomes[name]
        stored = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
        assert np.array_equal(stored, upright), name
        assert json.loads(row["filter_notes"])["source_format"] == Image.open(io.BytesIO(outcomes[name][0])).format


def test_the_training_cap_downscales_and_says_so(outcomes):
    _, _, row = outcomes["over_training_cap.jpg"]
    assert json.loads(row["filter_notes"])["downscaled"] == "4000x3000->2000x1500"
    assert json.loads(row["filter_values"])["pixels"] == 12_000_000
    _, _, legal = outcomes["huge_legal.jpg"]
    assert json.loads(legal["filter_notes"]) == {} and json.loads(legal["filter_values"])["pixels"] == TRAIN_CAP


def test_unsupported_formats_say_what_is_missing(outcomes):
    assert "pillow-heif" in outcomes["phone.heic"][2]["detail"]
    assert "JPEG XL" in outcomes["next.jxl"][2]["detail"]
    assert "BUFR" in outcomes["weather.bufr"][2]["detail"]
