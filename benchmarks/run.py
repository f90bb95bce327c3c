"""Side-by-side benchmarks, ``python -m benchmarks.run [--quick] [--out benchmarks/results.json]``.

Every comparison runs our code and the baseline procedure on identical inputs in one process, alternating
the sides over the repeats, and reports a ratio of two medians (baseline / ours, > 1: ours is better)
together with whether both sides produced the same result. Models are random-weight models of the real
architectures (cost depends on the shapes, not the weights) loaded through the real ``from_pretrained``.
``results.json`` is written after every row: ``comparisons`` (the uniform list scripts read), ``scaling``,
``machine`` and the load averages (other processes on the machine skew timings).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import TINY_DIR, load_average, machine, with_load


@dataclass
class Sizes:
    """How much each row measures: the full run or ``--quick`` (a smoke run for the test suite)."""

    repeats: int
    captions: int
    vae_images: int
    decode_images: int
    actor_images: int
    pipeline_inputs: int
    pipeline_repeats: int
    memory_inputs: tuple[int, int]
    caption_images: int


FULL = Sizes(
    repeats=3, captions=128, vae_images=6, decode_images=4, actor_images=6, pipeline_inputs=1200,
    pipeline_repeats=1, memory_inputs=(200, 2000), caption_images=32,
)  # fmt: skip
QUICK = Sizes(
    repeats=1, captions=8, vae_images=3, decode_images=1, actor_images=1, pipeline_inputs=12, pipeline_repeats=1,
    memory_inputs=(6, 18), caption_images=4,
)  # fmt: skip


@dataclass
class Context:
    sizes: Sizes
    quick: bool
    device: str
    workdir: Path
    shared: dict[str, Any] = field(default_factory=dict)


def row_t5(ctx: Context) -> list[dict]:
    from benchmarks.t5 import bench_bytes, bench_t5, pseudo_captions, vae_moments_1024, write_t5_model

    sigma = TINY_DIR / "pixart_sigma"
    model = sigma if ctx.quick else write_t5_model(ctx.workdir / "t5", sigma / "tokenizer")
    # 8 length-sorted micro-batches per block, as the stage's defaults give on Σ: 256 rows per block × 2
    # captions each, micro-batch 64.
    batch_size = max(1, ctx.sizes.captions // 8)
    t5_row, outputs = bench_t5(
        model, pseudo_captions(ctx.sizes.captions), batch_size=batch_size, repeats=ctx.sizes.repeats,
        device=ctx.device,
    )  # fmt: skip
    return [t5_row, bench_bytes(outputs, vae_moments_1024(sigma / "vae"))]


def row_vae(ctx: Context) -> list[dict]:
    from benchmarks.vae import bench_vae, write_vae

    model = TINY_DIR / "pixart_sigma/vae" if ctx.quick else write_vae(ctx.workdir / "vae")
    return [bench_vae(model, ctx.sizes.vae_images, ctx.sizes.repeats, device=ctx.device)]


def row_actor_cpu(ctx: Context) -> list[dict]:
    from benchmarks.decode import bench_actor_cpu

    return [bench_actor_cpu(ctx.sizes.actor_images, ctx.sizes.repeats, quick=ctx.quick)]


def row_decode(ctx: Context) -> list[dict]:
    from benchmarks.decode import bench_decode

    return [bench_decode(ctx.sizes.decode_images, ctx.sizes.repeats, quick=ctx.quick)]


def row_pipeline(ctx: Context) -> list[dict]:
    from benchmarks.pipeline import bench_pipeline

    return [bench_pipeline(ctx.sizes.pipeline_inputs, ctx.sizes.pipeline_repeats)]


def row_memory(ctx: Context) -> list[dict]:
    from benchmarks.pipeline import bench_memory

    return [bench_memory(*ctx.sizes.memory_inputs)]


def row_caption(ctx: Context) -> list[dict]:
    from benchmarks.caption import bench_caption, vllm_note

    note = "" if ctx.quick else vllm_note(ctx.sizes.caption_images)
    return [bench_caption(ctx.sizes.caption_images, ctx.sizes.repeats, device=ctx.device, vllm_note=note)]


ROWS: dict[str, Callable[[Context], list[dict]]] = {
    "t5": row_t5,  # + bytes_vs_pixart_sigma_native, from the same features
    "vae": row_vae,
    "actor_cpu": row_actor_cpu,
    "decode": row_decode,
    "pipeline": row_pipeline,
    "memory": row_memory,
    "caption": row_caption,
}


def scaling(quick: bool) -> dict[str, Any]:
    """Per-million figures of the dedup global step (``benchmarks/dedup_scaling.py`` states the method)."""
    from benchmarks.dedup_scaling import scaling_measurement

    return scaling_measurement(quick=quick)


def table(comparisons: list[dict]) -> str:
    """Markdown: one line per comparison (the README's bench table)."""
    lines = ["| row | unit | baseline | ours | ratio | target | met | same result |", "|---" * 8 + "|"]
    for row in comparisons:
        lines.append(
            f"| `{row['name']}` | {row['unit']} | {row['baseline']:.4g} | {row['ours']:.4g} | **{row['ratio']:.2f}** "
            f"| ≥ {row['target']:g} | {'yes' if row['met'] else 'NO'} | {'yes' if row['equivalent'] else 'NO'} |"
        )
    return "\n".join(lines)


# The comparison rows each entry of ROWS writes, in the order results.json lists them.
ROW_NAMES = {
    "t5": ("t5_vs_pixart_sigma_procedure", "bytes_vs_pixart_sigma_native"),
    "vae": ("vae_vs_one_at_a_time",),
    "actor_cpu": ("gpu_actor_cpu_ms_per_image",),
    "decode": ("decode_resize_vs_naive",),
    "pipeline": ("pipeline_vs_sum_of_stages",),
    "memory": ("peak_memory_2000_vs_200_inputs",),
    "caption": ("caption_vs_per_image_loop",),
}


def kept_rows(previous: dict, rerun: list[str]) -> dict:
    """An earlier results.json without the rows about to be measured again."""
    names = {name for entry in rerun for name in ROW_NAMES[entry]}
    previous["comparisons"] = [row for row in previous["comparisons"] if row["name"] not in names]
    previous["rows"] = {entry: load for entry, load in previous.get("rows", {}).items() if entry not in rerun}
    return previous


def in_row_order(comparisons: list[dict]) -> list[dict]:
    order = [name for names in ROW_NAMES.values() for name in names]
    return sorted(comparisons, key=lambda row: order.index(row["name"]) if row["name"] in order else len(order))


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """numpy scalars (np.bool_, np.float32, ...) as the Python values they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke run for the tests)")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, both sides (1: what a Ray model actor gets on CPU)"
    )
    parser.add_argument("--device", default="cpu", help="model device for the T5 and VAE rows (cpu | cuda)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument(
        "--rerun", action="store_true", help="with --only: replace those rows in an existing --out, keep the others"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # one setting for both sides of every comparison
    from curation.models.tiny import ensure_tiny_models

    ensure_tiny_models(TINY_DIR)
    out = Path(args.out)
    results: dict[str, Any] = {
        "comparisons": [],
        "scaling": {},
        "machine": machine(args.threads) | {"device": args.device},
        "quick": args.quick,
        "load_average_1min": {"start": load_average()},
        "rows": {},
    }
    names = args.only.split(",")
    if args.rerun and out.exists():
        results = kept_rows(json.loads(out.read_text()), names)
    with tempfile.TemporaryDirectory() as tmp:
        context = Context(QUICK if args.quick else FULL, args.quick, args.device, Path(tmp))
        for name in names:
            rows, load = with_load(ROWS[name], context)
            results["comparisons"] = in_row_order(results["comparisons"] + rows)
            results["rows"][name] = load
            for row in rows:
                print(
                    f"{row['name']}: {row['ratio']:.2f}x (target {row['target']:g}), same result: "
                    f"{row['equivalent']}, load {load['load_before']}->{load['load_after']}",
                    flush=True,
                )
            write(results, out)
    if not (args.rerun and results["scaling"]):
        results["scaling"] = scaling(args.quick)
    results["load_average_1min"]["end"] = load_average()
    rows = results["rows"].items()
    # The bench's own Ray rows keep a few processes busy: warn beyond what it makes itself.
    busy = [name for name, load in rows if max(load["load_before"], load["load_after"]) > 2 * (os.cpu_count() or 1)]
    results["machine_loaded_during"] = busy
    if busy:
        print(f"WARNING: the machine was loaded by other processes during {busy}: timings are noisy")
    write(results, out)
    print(table(results["comparisons"]))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
