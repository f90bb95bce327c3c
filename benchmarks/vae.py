"""VAE latents: our ``VAEStage`` on prepared uint8 bucket inputs vs one image at a time (PixArt's extractor).

Both sides start from the same prepared uint8 bucket crops (the filter makes them on CPUs; decoding is
measured in ``benchmarks/decode.py``). The baseline is PixArt-Σ's multi-scale extraction procedure:
``AutoencoderKL.from_pretrained`` as loaded (fp32, default memory format), batch size 1, ToTensor +
Normalize, ``torch.cat([mean, std])``. Ours is ``VAEStage.process_rows`` with the stage's configuration.

``python -m benchmarks.vae --sweep`` times the configurations the stage can take on this CPU (memory format,
micro-batch) against the same baseline, to pick the defaults.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ProcessSide, alternate, comparison
from benchmarks.inputs import mosaic
from curation.config import ModelRef, Resources, VAEConfig
from curation.models.winograd import nnpack_available
from curation.records import Row, get_pixels, new_row
from curation.stages.prepare import PrepareSpec
from curation.stages.vae import VAEStage, normalise

# diffusers' AutoencoderKL with the SD / SDXL VAE architecture.
VAE_SHAPE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
IMAGE_SIZES = ((320, 320), (288, 432), (432, 288))  # (h, w) → 256-table buckets 1.0, 0.68, 1.46
# Same latents: float16 moments may differ by the float16 rounding of float32 results that differ in the last
# bits (other convolution algorithms for another memory format or batch size): 2 float16 ulps at |x| <= 4.
LATENT_ATOL = 2e-3 * 4
ACTOR_THREADS = 1  # a Ray VAE actor with num_cpus <= 1 runs with OMP_NUM_THREADS=1
# The bench row's CPU setting: an actor given 2 CPUs running the stage's CPU defaults (Winograd convolutions,
# one single-threaded image per thread). `--sweep --threads 2` on this machine (CPU time vs one at a time):
# winograd_image_parallel 1.85x, winograd_bs1 1.43x (NNPACK's own 2 threads), direct convolutions 0.85-1.02x
# (contiguous or channels_last, batched or one image per thread); batches > 1 never faster on CPU.
CPU_THREADS = 2
CPU_BATCH_SIZE = 1


def write_vae(directory: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**VAE_SHAPE).save_pretrained(directory)
    return directory


def bucket_rows(count: int, base_size: int = 256, square: bool = False) -> list[Row]:
    """Rows as the filter stage leaves them (prepared uint8 bucket crops), cycling over 3 buckets (or one)."""
    spec = PrepareSpec(base_size=base_size)
    sizes = IMAGE_SIZES[:1] if square else IMAGE_SIZES
    rows = []
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        image = mosaic(100 + i, (width, height))
        row = new_row(f"img{i:03d}", "benchmark", b"")
        bucket, (bucket_h, bucket_w) = spec.bucket(height, width)
        row.update(width=width, height=height, bucket=bucket, bucket_h=bucket_h, bucket_w=bucket_w)
        spec.prepare(row, image)
        rows.append(row)
    return rows


def pixart_vae(model_dir: Path, device: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


@torch.inference_mode()
def one_at_a_time(vae, rows: list[Row]) -> list[np.ndarray]:
    """PixArt's multi-scale extractor loop: batch size 1, ToTensor + Normalize, cat(mean, std)."""
    out = []
    for row in rows:
        pixels = normalise(torch.from_numpy(get_pixels(row, "vae").copy())[None]).contiguous()
        posterior = vae.encode(pixels.to(vae.device)).latent_dist
        out.append(torch.cat([posterior.mean, posterior.std], dim=1)[0].float().cpu().numpy().astype(np.float16))
    return out


def stage_latents(stage: VAEStage, rows: list[Row]) -> list[np.ndarray]:
    copies = [dict(row) for row in rows]
    stage.process_rows(copies)
    return [np.load(io.BytesIO(row["vae"]), allow_pickle=False) for row in copies]


def vae_stage(model_dir: Path, device: str, batch_size: int, **settings) -> VAEStage:
    """``VAEStage`` set up on the bench's 256 table; ``settings``: other ``VAEConfig`` fields (CPU knobs)."""
    config = VAEConfig(
        model=ModelRef(path=str(model_dir), device=device, dtype="float32"),
        aspect_ratios=256,
        resources=Resources(batch_size=batch_size, num_gpus=0),
        **settings,
    )
    stage = VAEStage(config)
    stage.setup()
    return stage


def max_latent_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max()) for x, y in zip(a, b, strict=True))


def baseline_side(model_dir: Path, rows: list[Row], device: str) -> Callable[[], list[np.ndarray]]:
    return functools.partial(one_at_a_time, pixart_vae(model_dir, device), rows)


def stage_side(
    model_dir: Path, rows: list[Row], device: str, batch_size: int = CPU_BATCH_SIZE, **settings
) -> Callable[[], list[np.ndarray]]:
    """``VAEStage`` as a VAE actor holds it: its own process, ``setup()`` once; config defaults unless given."""
    return functools.partial(stage_latents, vae_stage(model_dir, device, batch_size, **settings), rows)


def run_sides(builds: dict[str, Callable], repeats: int, threads: int) -> tuple[dict, dict, dict]:
    """Each side in its own process; one warm-up call each, then ``repeats`` alternating calls.

    Returns (median CPU seconds per side, {side: {"cpu": [...], "wall": [...]}}, last outputs).
    """
    sides = {name: ProcessSide(build, threads) for name, build in builds.items()}
    try:
        for side in sides.values():
            side()  # warm-up: first-call allocations, oneDNN primitive creation
        _, _, outputs = alternate(sides, repeats)  # timed in the children
    finally:
        for side in sides.values():
            side.close()
    runs = {name: {"cpu": side.cpu_seconds[1:], "wall": side.seconds[1:]} for name, side in sides.items()}
    return {name: statistics.median(r["cpu"]) for name, r in runs.items()}, runs, outputs


def bench_vae(
    model_dir: Path,
    images: int,
    repeats: int,
    device: str = "cpu",
    threads: int = CPU_THREADS,
    batch_size: int = CPU_BATCH_SIZE,
) -> dict:
    """``vae_vs_one_at_a_time``: the stage as a CPU run configures it (its defaults: Winograd convolutions, one
    image per thread) vs one at a time; on a GPU (where the stage batches) pass the GPU micro-batch."""
    defaults = VAEConfig(model=ModelRef(path=str(model_dir)))
    on_cpu = device == "cpu"
    channels_last, image_parallel = defaults.channels_last, defaults.cpu_image_parallel and on_cpu
    winograd = defaults.cpu_winograd and on_cpu and nnpack_available()
    channels_last = channels_last and not winograd
    rows = bucket_rows(images)
    seconds, runs, outputs = run_sides(
        {
            "one_at_a_time": functools.partial(baseline_side, model_dir, rows, device),
            "ours": functools.partial(stage_side, model_dir, rows, device, batch_size),
        },
        repeats,
        threads,
    )
    diff = max_latent_diff(outputs["ours"], outputs["one_at_a_time"])
    buckets = sorted({f"{r['bucket_h']}x{r['bucket_w']}" for r in rows})
    return comparison(
        "vae_vs_one_at_a_time",
        "s",
        seconds["one_at_a_time"] / images,
        seconds["ours"] / images,
        target=1.2,
        equivalent=diff <= LATENT_ATOL,
        note=(
            f"CPU seconds per image (process time of all {threads} torch threads), {images} images in buckets "
            f"{', '.join(buckets)} of the 256 table, random-weight AutoencoderKL with the SD/SDXL VAE "
            f"architecture, fp32, {device}, {threads} torch threads on both sides (a CPU VAE actor given "
            f"num_cpus={threads}; PixArt's script uses every core by default), each side in its own process (as "
            f"deployed), both from the same prepared uint8 bucket crops. Baseline: PixArt-Sigma's multi-scale "
            f"extractor procedure (model as loaded, batch size 1, every operator over the {threads} threads). "
            f"Ours: VAEStage.setup + process_rows with its CPU defaults: "
            + (
                "3x3 convolutions through NNPACK's Winograd transform (cpu_winograd; NCHW), "
                if winograd
                else f"channels_last={channels_last}, "
            )
            + (
                f"{threads} images at once, one single-threaded encode per thread (cpu_image_parallel: no barrier "
                f"after each operator)"
                if image_parallel
                else f"micro-batch {batch_size}"
            )
            + f"; see `python -m benchmarks.vae --sweep`. Same float16 latents: max |diff| {diff:.1e} "
            f"(<= {LATENT_ATOL:g})."
        ),
        images=images,
        buckets=buckets,
        batch_size=batch_size,
        channels_last=channels_last,
        image_parallel=image_parallel,
        winograd=winograd,
        threads=threads,
        runs=runs,
        max_abs_diff=diff,
    )


# Convolution method and memory layout of each swept configuration: (cpu_winograd, channels_last).
SWEPT_LAYOUTS = {"winograd": (True, False), "contiguous": (False, False), "channels_last": (False, True)}


def sweep_sides(batch_sizes: list[int], several_threads: bool) -> Iterator[tuple[str, int, dict]]:
    """(side name, micro-batch, ``VAEConfig`` settings) of every CPU configuration the stage can take: each
    layout batched at every micro-batch, and (with several threads) one single-threaded image per thread."""
    for name, (winograd, channels_last) in SWEPT_LAYOUTS.items():
        layout = dict(cpu_winograd=winograd, channels_last=channels_last)
        for batch_size in batch_sizes:
            yield f"{name}_bs{batch_size}", batch_size, dict(layout, cpu_image_parallel=False)
        if several_threads:
            yield f"{name}_image_parallel", 1, dict(layout, cpu_image_parallel=True)


def sweep(
    model_dir: Path, images: int, repeats: int, batch_sizes: list[int], threads: int, square: bool, device: str = "cpu"
) -> dict:
    """Per-image seconds of every (memory format, micro-batch or one image per thread) against the
    one-at-a-time baseline, same run."""
    rows = bucket_rows(images, square=square)
    builds = {"one_at_a_time": functools.partial(baseline_side, model_dir, rows, device)}
    for side, batch_size, settings in sweep_sides(batch_sizes, threads > 1):
        builds[side] = functools.partial(stage_side, model_dir, rows, device, batch_size, **settings)
    seconds, runs, outputs = run_sides(builds, repeats, threads)
    reference = outputs["one_at_a_time"]
    wall = {name: statistics.median(r["wall"]) for name, r in runs.items()}
    return {
        name: {
            "cpu_s_per_image": round(s / images, 4),
            "vs_one_at_a_time_cpu": round(seconds["one_at_a_time"] / s, 3),
            "vs_one_at_a_time_wall": round(wall["one_at_a_time"] / wall[name], 3),
            "max_abs_diff": max_latent_diff(outputs[name], reference),
            "runs": runs[name],
        }
        for name, s in seconds.items()
    }


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description="VAE stage configurations on this machine vs one at a time")
    parser.add_argument("--sweep", action="store_true", required=True)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--threads", type=int, default=ACTOR_THREADS)
    parser.add_argument("--square", action="store_true", help="all images in the 1.0 bucket (full batches)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_vae(Path(tmp) / "vae")
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        result = sweep(model_dir, args.images, args.repeats, batch_sizes, args.threads, args.square)
    print(json.dumps({"threads": args.threads, "images": args.images, "configurations": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
