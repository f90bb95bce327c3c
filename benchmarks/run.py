"""Side-by-side benchmarks, ``python -m benchmarks.run [--quick] [--out benchmarks/results.json]``.

Each comparison runs our stage and the baseline procedure on identical inputs in one process with the
same torch thread count, alternating sides over the repeats; every claim is a ratio of two medians.
Models are random-weight (cost depends on the architecture, not the weights) and load through the real
``from_pretrained`` code.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from curation.config import ModelRef, Resources, T5Config, VAEConfig
from curation.models.loading import resolve_device
from curation.models.tiny import _WORDS, ensure_tiny_models
from curation.stages.t5 import T5Stage, npy_bytes

ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = ROOT / ".cache/tiny-models"
# t5-v1_1-small-like: realistic layer structure, CPU-feasible. PixArt's T5-XXL has D=4096.
T5_SHAPE = dict(
    d_model=512, d_kv=64, d_ff=1024, num_layers=6, num_heads=8, vocab_size=32128, feed_forward_proj="gated-gelu"
)
# diffusers' AutoencoderKL with the SD / SDXL VAE architecture.
VAE_SHAPE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
IMAGE_SIZES = ((320, 320), (288, 432), (432, 288))  # (h, w) → 256-table buckets 1.0, 0.68, 1.46
EQUIVALENCE_ATOL = 1e-4  # fp32 features, real tokens: both sides must compute the same thing
PIXART_D = 4096


def timed(sides: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict, dict]:
    """Run each side ``repeats`` times, alternating; returns (median s, all runs s, last outputs)."""
    runs: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            outputs[name] = fn()
            runs[name].append(round(time.perf_counter() - start, 4))
    return {name: statistics.median(r) for name, r in runs.items()}, runs, outputs


# ---------------------------------------------------------------- T5 features
def pseudo_captions(count: int, min_words: int = 10, max_words: int = 200, seed: int = 0) -> list[str]:
    """Deterministic captions of real vocabulary words (LLaVA captions run ~10-200 words)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))) + "." for _ in range(count)]


def write_t5_model(directory: Path, tokenizer_dir: Path) -> Path:
    """A random-weight T5 encoder of T5_SHAPE in PixArt's diffusers layout (text_encoder/ + tokenizer/)."""
    from transformers import T5Config as HFT5Config
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    config = HFT5Config(**T5_SHAPE, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
    T5EncoderModel(config).save_pretrained(directory / "text_encoder")
    shutil.copytree(tokenizer_dir, directory / "tokenizer")
    return directory


@torch.inference_mode()
def pixart_t5(tokenizer, encoder, texts: list[str], batch_size: int, max_length: int) -> list[tuple]:
    """PixArt's extractor procedure: pad to max_length, batches in input order, all T rows kept.

    Returns per caption ``(caption_feature [1, T, D] fp32, attention_mask [1, T] int16)`` as its .npz
    holds them (PixArt casts the features to float16 on save; done for both sides in ``storage``).
    """
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size],
            max_length=max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).to(encoder.device)
        hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0].float().cpu().numpy()
        masks = tokens.attention_mask.to(torch.int16).cpu().numpy()
        out.extend((hidden[i : i + 1], masks[i : i + 1]) for i in range(len(hidden)))
    return out


def max_feature_diff(ours: list[tuple], pixart: list[tuple]) -> tuple[float, bool]:
    """Largest |ours - PixArt| over real-token rows, and whether every token count agrees."""
    worst, counts_match = 0.0, True
    for (features, n_tokens, _), (padded, mask) in zip(ours, pixart, strict=True):
        real = padded[0][mask[0].astype(bool)]
        counts_match &= n_tokens == real.shape[0] == features.shape[0]
        if features.shape == real.shape:
            worst = max(worst, float(np.abs(features - real).max(initial=0.0)))
    return worst, counts_match


def storage(ours: list[tuple], pixart: list[tuple], dim: int) -> dict:
    """Mean bytes per caption: our float16 .npy [n, D] vs PixArt's np.savez_compressed float16 (1, T, D) + mask."""
    ours_bytes = [len(npy_bytes(features.astype(np.float16))) for features, _, _ in ours]
    pixart_bytes = []
    for padded, mask in pixart:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, caption_feature=padded.astype(np.float16), attention_mask=mask)
        pixart_bytes.append(buffer.getbuffer().nbytes)
    measured = {"d": dim, "ours_npy": statistics.mean(ours_bytes), "pixart_npz": statistics.mean(pixart_bytes)}
    scale = PIXART_D / dim  # payload bytes scale linearly with D (headers are a few hundred bytes)
    return {
        "measured": measured,
        "d4096_scaled": {
            "d": PIXART_D,
            "ours_npy": measured["ours_npy"] * scale,
            "pixart_npz": measured["pixart_npz"] * scale,
        },
        "ratio": measured["pixart_npz"] / measured["ours_npy"],
    }


def bench_t5(
    model_dir: Path,
    captions: list[str],
    batch_size: int = 32,
    repeats: int = 3,
    max_length: int = 300,
    device: str = "cpu",
) -> dict:
    """Our T5Stage.encode vs PixArt's procedure (batches of ``batch_size`` and, as shipped, batch 1), fp32 CPU."""
    from transformers import T5EncoderModel, T5Tokenizer

    stage = T5Stage(
        T5Config(
            model=ModelRef(path=str(model_dir), device=device, dtype="float32"),
            resources=Resources(batch_size=batch_size, num_gpus=0),
            max_length=max_length,
        )
    )
    stage.setup()
    tokenizer = T5Tokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=torch.float32)
    encoder.to(device).eval()
    sides = {
        "pixart_batched": lambda: pixart_t5(tokenizer, encoder, captions, batch_size, max_length),
        "pixart_batch1": lambda: pixart_t5(tokenizer, encoder, captions, 1, max_length),
        "ours": lambda: stage.encode(captions, dtype=np.float32),
    }
    stage.encode(captions[:2]), pixart_t5(tokenizer, encoder, captions[:2], 2, max_length)  # warm-up
    seconds, runs, outputs = timed(sides, repeats)
    diff, counts_match = max_feature_diff(outputs["ours"], outputs["pixart_batched"])
    tokens = [n for _, n, _ in outputs["ours"]]
    return {
        "captions": len(captions),
        "batch_size": batch_size,
        "max_length": max_length,
        "repeats": repeats,
        "d_model": int(encoder.config.d_model),
        "num_layers": int(encoder.config.num_layers),
        "tokens": {"min": min(tokens), "mean": statistics.mean(tokens), "max": max(tokens)},
        "seconds": seconds,
        "runs": runs,
        "captions_per_s": {name: len(captions) / s for name, s in seconds.items()},
        "speedup": {
            "vs_pixart_batched": seconds["pixart_batched"] / seconds["ours"],
            "vs_pixart_batch1": seconds["pixart_batch1"] / seconds["ours"],
        },
        "max_abs_diff_fp32": diff,
        "token_counts_match": counts_match,
        "equivalent": counts_match and diff <= EQUIVALENCE_ATOL,
        "bytes_per_caption": storage(outputs["ours"], outputs["pixart_batched"], int(encoder.config.d_model)),
    }


# ---------------------------------------------------------------- VAE latents
def write_vae(directory: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**VAE_SHAPE).save_pretrained(directory)
    return directory


def image_rows(count: int, base_size: int = 256) -> list[dict]:
    """Rows as the filter stage leaves them: JPEG bytes, upright size, bucket; sizes cycle over 3 buckets."""
    from PIL import Image

    from curation.buckets import bucket_for
    from curation.records import new_row

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        height, width = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        _, (bucket_h, bucket_w) = bucket_for(height, width, base_size)
        row = new_row(f"img{i:03d}", "benchmark", buffer.getvalue())
        row.update(width=width, height=height, bucket_h=bucket_h, bucket_w=bucket_w)
        rows.append(row)
    return rows


def one_at_a_time(stage, rows: list[dict]) -> list[np.ndarray]:
    """PixArt's multi-scale extractor: batch size 1, same preprocessing (bucket_pixels) and encode."""
    from curation.stages.vae import bucket_pixels, decode_upright

    interpolation = stage.config.interpolation
    return [
        stage.encode_pixels(
            bucket_pixels(decode_upright(row), (row["bucket_h"], row["bucket_w"]), interpolation)[None]
        )[0]
        for row in rows
    ]


def bucket_batched(stage, rows: list[dict]) -> list[dict]:
    """Our VAEStage: rows grouped by bucket, one ``vae.encode`` per batch of up to ``batch_size``."""
    copies = [dict(row) for row in rows]
    stage.process_rows(copies)
    return copies


def bench_vae(model_dir: Path, images: int, batch_size: int = 8, repeats: int = 3, device: str = "cpu") -> dict:
    from curation.stages.vae import VAEStage

    stage = VAEStage(
        VAEConfig(
            model=ModelRef(path=str(model_dir), device=device, dtype="float32"),
            aspect_ratios=256,
            resources=Resources(batch_size=batch_size, num_gpus=0),
        )
    )
    stage.setup()
    rows = image_rows(images)
    one_at_a_time(stage, rows[:1])  # warm-up
    seconds, runs, outputs = timed(
        {"one_at_a_time": lambda: one_at_a_time(stage, rows), "ours": lambda: bucket_batched(stage, rows)}, repeats
    )
    ours = [np.load(io.BytesIO(row["vae"]), allow_pickle=False) for row in outputs["ours"]]
    diff = max(
        float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
        for a, b in zip(ours, outputs["one_at_a_time"], strict=True)
    )
    return {
        "images": images,
        "buckets": sorted({f"{r['bucket_h']}x{r['bucket_w']}" for r in rows}),
        "batch_size": batch_size,
        "repeats": repeats,
        "seconds": seconds,
        "runs": runs,
        "images_per_s": {name: images / s for name, s in seconds.items()},
        "speedup": seconds["one_at_a_time"] / seconds["ours"],
        "max_abs_diff_fp16": diff,
    }


# ---------------------------------------------------------------- end-to-end demo
def demo_config(output: Path):
    from curation.config import load_config

    sigma = TINY_DIR / "pixart_sigma"
    overrides = [
        f"input=[{ROOT / 'examples/images'}]",
        f"output={output}",
        f"tiny_models_dir={TINY_DIR}",
        f"caption.model.path={TINY_DIR / 'llava'}",
        f"t5.model.path={sigma}",
        f"vae.model.path={sigma}",
    ]
    return load_config(ROOT / "configs/demo.yaml", overrides)


def bench_e2e(repeats: int) -> dict:
    """``pipelines.t2i.run`` on configs/demo.yaml (tiny models, embedded Ray); Ray start-up timed apart."""
    import ray

    from pipelines.t2i import run

    ensure_tiny_models(TINY_DIR)
    started_here = not ray.is_initialized()
    start = time.perf_counter()
    if started_here:
        ray.init(
            address="local",
            num_cpus=demo_config(Path("unused")).ray.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
        )
    ray_start = time.perf_counter() - start
    runs, manifest = [], {}
    try:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                manifest = run(demo_config(Path(tmp) / "out"))
                runs.append(round(time.perf_counter() - start, 3))
    finally:
        if started_here:
            ray.shutdown()
    seconds, counts = statistics.median(runs), manifest["counts"]
    return {
        "repeats": repeats,
        "ray_start_s": ray_start,
        "seconds": seconds,
        "runs": runs,
        "counts": counts,
        "reject_reasons": manifest.get("reject_reasons"),
        "failure_reasons": manifest.get("failure_reasons"),
        "inputs_per_s": counts["input"] / seconds,
        "written_per_s": counts["written"] / seconds,
    }


# ---------------------------------------------------------------- report
def ratio(value: float, better: str) -> str:
    return f"**{value:.2f}×** {better}" if value >= 1 else f"**{value:.2f}×** (ours is worse)"


def table(results: dict) -> str:
    """Markdown: one row per comparison; ratio = baseline / ours (time or bytes), same run."""
    t5, vae, e2e = results["t5"], results["vae"], results["e2e"]
    tok, store, cps, speedup = t5["tokens"], t5["bytes_per_caption"], t5["captions_per_s"], t5["speedup"]
    m, big, counts, pad = store["measured"], store["d4096_scaled"], e2e["counts"], t5["max_length"]
    kib = lambda b: f"{b / 1024:,.0f} KiB"  # noqa: E731
    rows = [
        (
            f"T5 features, {t5['captions']} captions ({tok['min']}–{tok['max']} tokens, mean {tok['mean']:.0f}), "
            f"T5 encoder {t5['num_layers']}×{t5['d_model']}, fp32",
            f"PixArt procedure: pad to {pad}, batches of "
            f"{t5['batch_size']} in input order: {cps['pixart_batched']:.1f} captions/s",
            f"length-sorted, padded to the batch's longest: {cps['ours']:.1f} captions/s",
            ratio(speedup["vs_pixart_batched"], "faster"),
        ),
        (
            "T5 features, same captions",
            f"PixArt's extract_features.py as shipped (batch 1, pad to {pad}): {cps['pixart_batch1']:.1f} captions/s",
            f"{cps['ours']:.1f} captions/s",
            ratio(speedup["vs_pixart_batch1"], "faster"),
        ),
        (
            f"T5 storage per caption, D={m['d']} (measured)",
            f"(1,{pad},D) f16 + mask, np.savez_compressed: {kib(m['pixart_npz'])}",
            f"[n,D] f16 .npy: {kib(m['ours_npy'])}",
            ratio(store["ratio"], "smaller"),
        ),
        (
            f"T5 storage per caption, D={big['d']} (T5-XXL; D={m['d']} × {big['d'] // m['d']}, bytes ∝ D)",
            kib(big["pixart_npz"]),
            kib(big["ours_npy"]),
            ratio(store["ratio"], "smaller"),
        ),
        (
            f"VAE latents, {vae['images']} images in {len(vae['buckets'])} buckets of the 256 table, SD/SDXL VAE "
            "architecture, fp32",
            f"one image at a time (PixArt multi-scale extractor, bs 1): "
            f"{vae['images_per_s']['one_at_a_time']:.2f} images/s",
            f"bucket batches of ≤{vae['batch_size']}: {vae['images_per_s']['ours']:.2f} images/s",
            ratio(vae["speedup"], "faster"),
        ),
        (
            "End-to-end `configs/demo.yaml` (smoke level: tiny models, embedded Ray, CPU)",
            "—",
            f"{e2e['inputs_per_s']:.2f} inputs/s, {e2e['seconds']:.0f} s ({counts['input']} in: {counts['written']}"
            f" written, {counts['rejected']} rejected, {counts['failed']} failed)",
            "—",
        ),
    ]
    header = ["| comparison | baseline | ours | ratio (baseline / ours) |", "|---|---|---|---|"]
    return "\n".join(header + ["| " + " | ".join(cells) + " |" for cells in rows])


def with_load(bench: Callable[..., dict], *args, **kwargs) -> dict:
    """Run one benchmark; record the 1-minute load average before and after (other processes skew timings)."""
    before = os.getloadavg()[0]
    result = bench(*args, **kwargs)
    return result | {"load_avg_1min": [round(before, 2), round(os.getloadavg()[0], 2)]}


def machine(threads: int) -> dict:
    import diffusers
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer captions/images/repeats (a smoke run)")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # one setting for every side of every comparison
    device = str(resolve_device(args.device))
    repeats = 1 if args.quick else 3
    tiny = ensure_tiny_models(TINY_DIR)
    results: dict = {"machine": machine(args.threads) | {"device": device}, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        t5_dir = write_t5_model(Path(tmp) / "t5", tiny / "pixart_sigma/tokenizer")
        results["t5"] = with_load(
            bench_t5, t5_dir, pseudo_captions(64 if args.quick else 256), repeats=repeats, device=device
        )
        print(f"t5: {json.dumps(results['t5']['speedup'])}", flush=True)
        vae_dir = write_vae(Path(tmp) / "vae")
        results["vae"] = with_load(bench_vae, vae_dir, 6 if args.quick else 16, repeats=repeats, device=device)
        print(f"vae: {results['vae']['speedup']:.2f}x", flush=True)
    results["e2e"] = with_load(bench_e2e, 1 if args.quick else 2)
    # Our own process accounts for ~threads of load (e2e's Ray workers more: not checked, it is a smoke number).
    busy = [k for k in ("t5", "vae") if max(results[k]["load_avg_1min"]) > args.threads + 0.5 * (os.cpu_count() or 1)]
    if busy:
        print(f"WARNING: other processes loaded the machine during {busy}: timings are not trustworthy, re-run")
    if not results["t5"]["equivalent"]:
        print("WARNING: the T5 sides disagree (max |diff| or token counts): the T5 ratio compares different work")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
