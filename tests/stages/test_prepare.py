"""Model inputs prepared by the filter stage from one decode: geometry, draft decoding, identity with the full path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.config import FilterConfig
from curation.records import OK, get_pixels, new_row
from curation.stages.filter import FilterStage, filter_image
from curation.stages.prepare import DRAFT_MARGIN, PrepareSpec, caption_view, cover_size, scorer_view, shrunk_size

PHOTOS = Path(__file__).resolve().parents[2] / "examples/images"
REAL_PHOTOS = ["astronaut.jpg", "retina.jpg", "rocket.jpg", "coffee_square.webp"]
CONFIG = FilterConfig(min_side=32, max_aspect_ratio=8)


def jpeg(image: Image.Image, quality: int = 90, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def full_path_crop(data: bytes, bucket_hw: tuple[int, int], interpolation=Image.Resampling.BICUBIC) -> np.ndarray:
    """The pre-preparation VAE path, written out independently: full decode, EXIF upright, RGB, cover, crop."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    height, width = bucket_hw
    scale = max(height / image.height, width / image.width)
    if height / image.height > width / image.width:
        size = (int(image.width * height / image.height), height)
    else:
        size = (width, int(image.height * width / image.width))
    assert max(abs(size[0] - image.width * scale), abs(size[1] - image.height * scale)) < 1
    resized = image.resize(size, interpolation)
    left, top = round((size[0] - width) / 2.0), round((size[1] - height) / 2.0)
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def prepared_row(data: bytes, spec: PrepareSpec) -> dict:
    row = new_row("k", "mem://k", data)
    FilterStage(CONFIG, spec).process_batch([row])
    assert row["status"] == OK, row["detail"]
    return row


@pytest.fixture(scope="module")
def photo_mosaic() -> Image.Image:
    """1280x1280 of four real photos (2x2): large enough that a 256-table bucket decodes at half scale."""
    mosaic = Image.new("RGB", (1280, 1280))
    for i, name in enumerate(REAL_PHOTOS):
        tile = Image.open(PHOTOS / name).convert("RGB").resize((640, 640), Image.Resampling.BICUBIC)
        mosaic.paste(tile, ((i % 2) * 640, (i // 2) * 640))
    return mosaic


# --- geometry -----------------------------------------------------------------------------------------


def test_caption_view_shrinks_the_longest_side_and_never_enlarges() -> None:
    assert caption_view(Image.new("RGB", (900, 300)), 300).shape == (100, 300, 3)
    assert caption_view(Image.new("RGB", (40, 30)), 300).shape == (30, 40, 3)


def test_scorer_view_is_clip_geometry() -> None:
    image = Image.fromarray(np.arange(300 * 600 * 3, dtype=np.uint32).astype(np.uint8).reshape(300, 600, 3))
    expected = np.asarray(image.resize((448, 224), Image.Resampling.BICUBIC).crop((112, 0, 336, 224)))
    np.testing.assert_array_equal(scorer_view(image, 224), expected)


@pytest.mark.parametrize("base_size", [256, 512, 1024, 2048])
def test_reduced_decode_keeps_twice_every_target_on_each_side(base_size: int) -> None:
    rng = np.random.default_rng(base_size)
    spec = PrepareSpec(base_size, caption_max_side=512, scorer_side=224)
    for width, height in rng.integers(300, 9000, size=(40, 2)):
        width, height = int(width), int(height)
        need_w, need_h = spec.decode_size(width, height)
        _, bucket_hw = spec.bucket(height, width)
        cover_h, cover_w = cover_size(height, width, bucket_hw)
        assert need_w >= DRAFT_MARGIN * cover_w and need_h >= DRAFT_MARGIN * cover_h
        caption_w, caption_h = shrunk_size(width, height, 512)
        assert need_w >= DRAFT_MARGIN * caption_w and need_h >= DRAFT_MARGIN * caption_h
        assert min(need_w, need_h) >= DRAFT_MARGIN * 224 - 1


def test_draft_decodes_at_reduced_scale_but_never_below_the_margin(photo_mosaic: Image.Image) -> None:
    data = jpeg(photo_mosaic)
    spec = PrepareSpec(256, caption_max_side=128)
    filtered = filter_image(data, CONFIG, spec.decode_size)
    assert filtered.size == (1280, 1280)
    assert filtered.image.size == (640, 640)  # DCT scale 1/2: 640 >= 2 x 256 (cover) > 1280 / 4
    cover_h, cover_w = cover_size(1280, 1280, spec.bucket(1280, 1280)[1])
    assert filtered.image.width >= DRAFT_MARGIN * cover_w and filtered.image.height >= DRAFT_MARGIN * cover_h


# --- pixels against the full-decode path ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in PHOTOS.glob("*") if p.suffix in {".jpg", ".png", ".webp"}))
def test_without_draft_the_vae_input_is_the_full_decode_path(name: str) -> None:
    data = (PHOTOS / name).read_bytes()
    try:
        row = prepared_row(data, PrepareSpec(256, caption_max_side=512, draft=False))
    except AssertionError:
        pytest.skip(f"{name} is one of the demo's deliberately broken inputs")
    expected = full_path_crop(row["image"], (row["bucket_h"], row["bucket_w"]))
    np.testing.assert_array_equal(get_pixels(row, "vae"), expected)


@pytest.mark.parametrize("crop", [(1280, 1280), (1280, 900), (900, 1280), (1280, 700)])
@pytest.mark.parametrize("quality", [80, 95])
def test_draft_vae_input_is_within_45_db_of_the_full_decode(photo_mosaic, crop, quality) -> None:
    data = jpeg(photo_mosaic.crop((0, 0, *crop)), quality)
    spec = PrepareSpec(256, caption_max_side=128)
    reduced = prepared_row(data, spec)
    full = prepared_row(data, PrepareSpec(256, caption_max_side=128, draft=False))
    assert (reduced["bucket"], reduced["width"], reduced["height"]) == (full["bucket"], *crop)
    assert psnr(get_pixels(reduced, "vae"), get_pixels(full, "vae")) >= 45
    assert psnr(get_pixels(reduced, "caption"), get_pixels(full, "caption")) >= 40


def test_exif_rotated_jpeg_is_prepared_upright() -> None:
    stored = Image.open(PHOTOS / "rocket.jpg").convert("RGB")  # 640x427, orientation 6 makes it 427x640
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(stored, exif=exif)
    row = prepared_row(data, PrepareSpec(256, caption_max_side=200))
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    assert (row["width"], row["height"]) == upright.size
    assert row["bucket_h"] > row["bucket_w"]
    vae = get_pixels(row, "vae")
    assert psnr(vae, full_path_crop(data, (row["bucket_h"], row["bucket_w"]))) == float("inf")
    assert get_pixels(row, "caption").shape == (200, 133, 3)


def test_only_the_requested_inputs_are_prepared() -> None:
    data = jpeg(Image.open(PHOTOS / "astronaut.jpg"))
    row = prepared_row(data, PrepareSpec(256, caption_max_side=None, scorer_side=224))
    assert get_pixels(row, "scorer").shape == (224, 224, 3)
    assert get_pixels(row, "vae").shape == (256, 256, 3)
    assert row["caption_pixels"] is None
