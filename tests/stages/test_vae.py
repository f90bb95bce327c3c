"""VAE stage: PixArt's cover-resize + centre-crop pixels, batched per bucket, mean ‖ std latents."""

from __future__ import annotations

import io
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.buckets import bucket_for
from curation.config import ModelRef, Resources, VAEConfig
from curation.io.layout import load_npy
from curation.models.winograd import nnpack_available
from curation.records import FAILED, OK, new_row, put_pixels
from curation.stages.prepare import bucket_crop
from curation.stages.vae import VAEStage, bucket_pixels, center_crop_box, cover_size, vae_flops

BASE_SIZE = 256
# Stored float16 vs the fp32 one-image reference: fp16 rounding is < 2**-11 relative, batching ~1e-6.
ATOL, RTOL = 1e-3, 1e-3


def noise_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8), mode)


def encoded(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def image_row(key: str, height: int, width: int, seed: int = 0) -> dict:
    """A row as the filter stage leaves it: the bucket and the prepared bucket crop (uint8)."""
    image = noise_image(height, width, seed)
    row = new_row(key, f"test/{key}", encoded(image))
    bucket, (bucket_h, bucket_w) = bucket_for(height, width, BASE_SIZE)
    row.update(width=width, height=height, bucket=bucket, bucket_h=bucket_h, bucket_w=bucket_w)
    put_pixels(row, "vae", bucket_crop(image, (bucket_h, bucket_w)))
    return row


def normalised(image: Image.Image) -> np.ndarray:
    return (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5


def set_up_stage(model: ModelRef, image_parallel: bool, winograd: bool = True) -> VAEStage:
    """``VAEStage.setup`` as in an actor given 2 CPUs (the image-parallel pool takes its size from torch's
    threads), the process's own thread count restored afterwards."""
    config = VAEConfig(
        model=model,
        resources=Resources(batch_size=2),
        aspect_ratios=BASE_SIZE,
        cpu_image_parallel=image_parallel,
        cpu_winograd=winograd,
    )
    stage = VAEStage(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stage.setup()
    finally:
        torch.set_num_threads(threads)
    return stage


def tiny_vae(tiny_models: Path) -> ModelRef:
    return ModelRef(path=str(tiny_models / "pixart_sigma"), subfolder="vae", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference_vae(tiny_models: Path):
    """The same weights as diffusers loads them, untouched by the stage (direct convolutions, NCHW)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_models / "pixart_sigma", subfolder="vae").eval()


@pytest.fixture(scope="module")
def stage(tiny_models: Path) -> VAEStage:
    """The batched path (what a GPU actor runs), on CPU."""
    vae = set_up_stage(tiny_vae(tiny_models), image_parallel=False)
    assert vae.image_threads is None
    return vae


@pytest.fixture(scope="module")
def parallel_stage(tiny_models: Path) -> VAEStage:
    """The CPU path of an actor with 2 torch threads: one single-threaded encode per thread."""
    vae = set_up_stage(tiny_vae(tiny_models), image_parallel=True)
    assert vae.image_threads is not None and vae.image_threads._max_workers == 2
    return vae


@pytest.fixture(params=["stage", "parallel_stage"])
def any_stage(request) -> VAEStage:
    return request.getfixturevalue(request.param)


@torch.inference_mode()
def one_image_reference(vae, image: Image.Image, bucket_hw: tuple[int, int]) -> np.ndarray:
    posterior = vae.encode(bucket_pixels(image, bucket_hw)[None].contiguous()).latent_dist
    return torch.cat([posterior.mean, posterior.std], dim=1)[0].numpy()


# --- pixels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "bucket_hw", "resized", "box"),
    [
        # th/h > tw/w: height fits, width int(800*256/600)=341; left = round(42.5) = 42 (round half to even)
        (600, 800, (256, 256), (256, 341), (42, 0, 298, 256)),
        # th/h < tw/w: width fits, height int(900*192/500)=345; top = round(12.5) = 12
        (900, 500, (320, 192), (345, 192), (0, 12, 192, 332)),
        # already the bucket's ratio: no crop
        (1000, 600, (320, 192), (320, 192), (0, 0, 192, 320)),
        # upscale of a small image: height fits, width int(80*320/100)=256; left = 24
        (100, 80, (320, 208), (320, 256), (24, 0, 232, 320)),
        # width fits, int() floors the height: int(500*208/333) = int(312.31) = 312; top = 4
        (500, 333, (304, 208), (312, 208), (0, 4, 208, 308)),
    ],
)
def test_cover_size_and_crop_match_pixart_arithmetic(height, width, bucket_hw, resized, box) -> None:
    assert cover_size(height, width, bucket_hw) == resized
    assert center_crop_box(*resized, bucket_hw) == box


def test_bucket_pixels_is_resize_then_centre_crop_then_normalise() -> None:
    image = noise_image(600, 800, seed=1)
    expected = normalised(image.resize((341, 256), Image.Resampling.BICUBIC).crop((42, 0, 298, 256)))

    pixels = bucket_pixels(image, (256, 256))

    assert pixels.dtype == torch.float32 and tuple(pixels.shape) == (3, 256, 256)
    np.testing.assert_allclose(pixels.numpy(), expected, rtol=0, atol=1e-6)
    assert pixels.min() >= -1 and pixels.max() <= 1


@pytest.mark.parametrize(("width", "left"), [(300, 22), (301, 22), (303, 24)])  # 22.5 -> 22, 23.5 -> 24
def test_crop_is_centred_when_no_resize_is_needed(width: int, left: int) -> None:
    image = noise_image(256, width, seed=2)

    pixels = bucket_pixels(image, (256, 256))

    np.testing.assert_array_equal(pixels.numpy(), normalised(image)[:, :, left : left + 256])


def test_lanczos_interpolation_is_used_when_configured() -> None:
    image = noise_image(600, 800, seed=3)
    crop = (42, 0, 298, 256)
    lanczos = normalised(image.resize((341, 256), Image.Resampling.LANCZOS).crop(crop))

    pixels = bucket_pixels(image, (256, 256), "lanczos").numpy()

    np.testing.assert_allclose(pixels, lanczos, rtol=0, atol=1e-6)
    assert not np.allclose(pixels, bucket_pixels(image, (256, 256), "bicubic").numpy())


def test_every_bucket_gets_its_exact_size_from_many_image_sizes() -> None:
    rng = np.random.default_rng(4)
    image = noise_image(8, 8)
    for height, width in rng.integers(40, 1200, size=(60, 2)):
        key, bucket_hw = bucket_for(int(height), int(width), BASE_SIZE)
        resized_h, resized_w = cover_size(int(height), int(width), bucket_hw)
        assert resized_h >= bucket_hw[0] and resized_w >= bucket_hw[1]
        assert resized_h == bucket_hw[0] or resized_w == bucket_hw[1]
        pixels = bucket_pixels(image.resize((int(width), int(height))), bucket_hw)
        assert tuple(pixels.shape) == (3, *bucket_hw), key


# --- latents ----------------------------------------------------------------------------------------


def test_batched_latents_equal_one_image_encodes_across_three_buckets(
    stage: VAEStage, reference_vae, monkeypatch
) -> None:
    sizes = [(300, 300), (300, 500), (500, 300), (400, 400), (240, 400), (280, 280), (550, 330)]
    rows = [image_row(f"k{i}", h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    buckets = Counter((row["bucket_h"], row["bucket_w"]) for row in rows)
    assert buckets == {(256, 256): 3, (192, 320): 2, (320, 192): 2}
    references = [
        one_image_reference(reference_vae, Image.open(io.BytesIO(row["image"])), (row["bucket_h"], row["bucket_w"]))
        for row in rows
    ]
    batch_shapes = spy_on_encode(stage, monkeypatch)

    stage.process_batch(rows)

    # one shape per encode call, at most batch_size images: 3 -> 2 + 1, 2, 2
    assert sorted(batch_shapes) == sorted([(2, 3, 256, 256), (1, 3, 256, 256), (2, 3, 192, 320), (2, 3, 320, 192)])
    for row, expected in zip(rows, references, strict=True):
        stored = load_npy(row["vae"])
        h, w = row["bucket_h"], row["bucket_w"]
        assert row["status"] == OK
        assert stored.dtype == np.float16 and stored.shape == (8, h // 8, w // 8)
        assert (stored[4:] > 0).all(), "std channels must be positive"
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def wide_vae_dir(tmp_path_factory) -> Path:
    """A VAE with 64-channel levels: wide enough for the Winograd layers (the tiny one has 8-16 channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("wide_vae")
    blocks = ("DownEncoderBlock2D",) * 2
    AutoencoderKL(
        block_out_channels=(64, 64), down_block_types=blocks, up_block_types=("UpDecoderBlock2D",) * 2
    ).save_pretrained(directory)
    return directory


def wide_stage(directory: Path, winograd: bool = True, image_parallel: bool = False) -> VAEStage:
    return set_up_stage(ModelRef(path=str(directory), device="cpu", dtype="float32"), image_parallel, winograd)


@pytest.mark.skipif(not nnpack_available(), reason="this torch build has no NNPACK for this CPU")
@pytest.mark.parametrize("image_parallel", [False, True])
def test_wide_3x3_layers_run_winograd_and_give_the_direct_latents(
    wide_vae_dir: Path, image_parallel: bool, monkeypatch
) -> None:
    from diffusers import AutoencoderKL

    reference = AutoencoderKL.from_pretrained(wide_vae_dir).eval()
    convs = [m for m in reference.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    wide = [
        m for m in convs if m.kernel_size == (3, 3) and m.stride == (1, 1) and min(m.in_channels, m.out_channels) >= 64
    ]
    rows = [image_row(f"w{i}", h, w, seed=i) for i, (h, w) in enumerate([(300, 300), (300, 500), (500, 300)])]
    expected = [
        one_image_reference(reference, Image.open(io.BytesIO(r["image"])), (r["bucket_h"], r["bucket_w"]))
        for r in rows
    ]
    nnpack_calls = []
    nnpack = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: nnpack_calls.append(1) or nnpack(*a))

    stage = wide_stage(wide_vae_dir, image_parallel=image_parallel)
    stage.process_batch(rows)

    assert 0 < len(wide) < len(convs)  # conv_in (3 channels), conv_out (8), the stride-2 downsampler: direct
    assert stage.winograd_layers == len(wide) and not stage.channels_last
    assert (stage.image_threads is not None) == image_parallel
    assert len(nnpack_calls) >= len(wide) * len(rows)  # every wide layer, every image (maps >= 32x32 here)
    for row, reference_latents in zip(rows, expected, strict=True):
        assert row["status"] == OK
        np.testing.assert_allclose(load_npy(row["vae"]).astype(np.float32), reference_latents, rtol=RTOL, atol=ATOL)


def test_winograd_off_or_narrow_layers_keep_onednn_channels_last(wide_vae_dir: Path, stage: VAEStage) -> None:
    direct = wide_stage(wide_vae_dir, winograd=False)
    assert direct.winograd_layers == 0 and direct.channels_last
    assert direct.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert stage.winograd_layers == 0 and stage.channels_last  # the tiny VAE: 8-16 channels
    for vae in (direct.vae, stage.vae):
        assert all(type(m) is torch.nn.Conv2d for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d))


def spy_on_encode(stage: VAEStage, monkeypatch, threads: list | None = None) -> list[tuple[int, ...]]:
    """Records each encode call's input shape (and, if given, the calling thread and its torch threads)."""
    shapes: list[tuple[int, ...]] = []
    original = stage.vae.encode

    def recording_encode(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        if threads is not None:
            threads.append((threading.get_ident(), torch.get_num_threads()))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(stage.vae, "encode", recording_encode)
    return shapes


def test_on_cpu_each_image_is_encoded_alone_on_a_single_threaded_pool_thread(
    parallel_stage: VAEStage, reference_vae, monkeypatch
) -> None:
    sizes = [(300, 300), (300, 500), (500, 300), (400, 400), (240, 400), (280, 280)]
    rows = [image_row(f"k{i}", h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    references = [
        one_image_reference(reference_vae, Image.open(io.BytesIO(row["image"])), (row["bucket_h"], row["bucket_w"]))
        for row in rows
    ]
    calls: list[tuple[int, int]] = []
    shapes = spy_on_encode(parallel_stage, monkeypatch, calls)
    parallel_stage.metrics.take()

    parallel_stage.process_batch(rows)

    assert sorted(shapes) == sorted((1, 3, row["bucket_h"], row["bucket_w"]) for row in rows)
    assert {torch_threads for _, torch_threads in calls} == {1}
    assert threading.get_ident() not in {thread for thread, _ in calls}
    for row, expected in zip(rows, references, strict=True):
        assert row["status"] == OK and row["vae_pixels"] is None
        np.testing.assert_allclose(load_npy(row["vae"]).astype(np.float32), expected, rtol=RTOL, atol=ATOL)
    figures = parallel_stage.metrics.take()
    expected_flops = sum(vae_flops(parallel_stage.vae.config, (1, 3, r["bucket_h"], r["bucket_w"])) for r in rows)
    assert figures["model_calls"] == 1  # one record for the whole pass: its wall time, every image's FLOPs
    assert figures["model_flops"] == pytest.approx(expected_flops)


def test_the_stage_never_decodes_the_encoded_image(any_stage: VAEStage, reference_vae, monkeypatch) -> None:
    rows = [image_row(k, 300, 300, seed=i) for i, k in enumerate("ab")]
    expected = [one_image_reference(reference_vae, noise_image(300, 300, seed=i), (256, 256)) for i in range(2)]
    for row in rows:
        row["image"] = b"not an image: only the prepared pixels may be used"

    def no_decoding(*args, **kwargs):
        raise AssertionError("the VAE stage opened an encoded image")

    monkeypatch.setattr(Image, "open", no_decoding)
    any_stage.process_batch(rows)

    for row, reference in zip(rows, expected, strict=True):
        assert row["status"] == OK
        np.testing.assert_allclose(load_npy(row["vae"]).astype(np.float32), reference, rtol=RTOL, atol=ATOL)


def test_prepared_pixels_leave_the_row_once_encoded(any_stage: VAEStage) -> None:
    row = image_row("a", 300, 400)

    any_stage.process_batch([row])

    assert row["status"] == OK and row["vae"] is not None
    assert row["vae_pixels"] is None and row["vae_shape"] is None


def test_a_row_with_missing_or_misshaped_pixels_fails_alone(any_stage: VAEStage) -> None:
    good, liar, missing, other = (image_row(k, 300, 300, seed=i) for i, k in enumerate(["a", "b", "c", "d"]))
    put_pixels(liar, "vae", np.zeros((256, 248, 3), np.uint8))
    missing["vae_pixels"] = None

    any_stage.process_batch([good, liar, missing, other])

    assert [row["status"] for row in (good, liar, missing, other)] == [OK, FAILED, FAILED, OK]
    assert liar["stage"] == "vae" and "256x248" in liar["detail"]
    assert "no prepared vae pixels" in missing["detail"]
    assert good["vae"] is not None and other["vae"] is not None
