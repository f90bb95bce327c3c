"""GPU throughput and MFU of the three model stages at full size: ``make bench-gpu`` (``python3 benchmarks/gpu.py``).

One CUDA GPU, Python ≥ 3.11, torch and transformers; nothing else (no network, no hub, no venv). Models have
the real architectures and sizes with random weights, built from configs written below: the T5-v1.1-XXL
encoder (``google/t5-v1_1-xxl``), the SDXL VAE encoder (``stabilityai/sdxl-vae``) and LLaVA-1.5-7B
(``llava-hf/llava-1.5-7b-hf``); cost depends on shapes, not on weight values. All run in bf16 with SDPA
attention, inputs copied host→device from pinned memory with ``non_blocking``, outputs copied back as the
stages do; the VAE runs channels_last. ``--compile`` wraps the T5 encoder and the VAE encoder in
``torch.compile`` (compile time lands in ``warmup_s``; each of the two gets 2 more minutes of time budget).

Measured (each time-boxed; ~4–5 minutes in all on an H100):
- T5: captions/s at ``max_length`` 120 and 300, captions of realistic lengths either sorted by length and
  padded to each micro-batch's longest (what the T5 stage does) or padded to ``max_length`` (PixArt's way);
- VAE: images/s at 512², 1024², 2048² buckets, two batch sizes each;
- LLaVA: images/s of ``generate`` with a fixed number of new tokens (``min_new_tokens = max_new_tokens``,
  so random weights generate exactly that many): 64 at two batch sizes, and the stage's default 300.

diffusers (VAE only) may be missing: ``make gpu-wheels`` on a machine with network downloads the pinned
version and its dependencies as wheels into ``.cache/gpu-wheels``; copied there on the GPU machine, they are
unpacked and appended to ``sys.path`` (installed packages still take precedence).

Output (``--out``, default ``benchmarks/results_gpu.json``), rewritten after every measurement so a killed run
keeps what it measured::

    {"schema": 1, "smoke": bool, "started": ISO time, "environment": {device, dtype, peak_flops, torch,
     cuda, transformers, diffusers, python, compile},
     "models": {"t5" | "vae" | "llava": {"model", "params", "init_s", "attn_implementation", "compiled",
                "error"?, "measurements": [
        {"name", "unit" ("captions/s" | "images/s"), "settings": {...}, "batch_size", "steps", "items",
         "seconds", "items_per_s", "ms_per_step_median", "flops", "flops_per_item", "flops_per_s",
         "mfu" (null when the GPU's peak is unknown), "max_memory_gib", "warmup_s"}
        | {"name", "settings", "error" | "skipped"}]}}}

FLOPs come from ``curation/models/flops.py`` (matrix products only, multiply-add = 2), for the shapes actually
run (padding included); MFU is against the GPU's dense bf16 peak. ``--smoke`` runs tiny shapes on the CPU in
seconds (the test suite checks the script that way).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache/gpu-wheels"
MODELS = ("t5", "vae", "llava")
COMPILE_ALLOWANCE_S = 120.0  # extra time budget per compiled model (T5, VAE): compiling happens in the warmups


def _load_flops_module():
    """``curation/models/flops.py`` by path: it needs only torch, the ``curation`` package needs more."""
    spec = importlib.util.spec_from_file_location("curation_model_flops", ROOT / "curation/models/flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flops = _load_flops_module()

# --- Configurations (values of the public config.json files) ----------------------------------------------

T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
)
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024,
    scaling_factor=0.13025,
)
CLIP_VIT_L_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
VICUNA_7B = dict(
    vocab_size=32064,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
LLAVA_15 = dict(image_token_index=32000, pad_token_id=32001, vision_feature_layer=-2)
LLAVA_15 |= dict(vision_feature_select_strategy="default", projector_hidden_act="gelu")

# Tiny shapes of the same architectures for --smoke.
T5_SMOKE = T5_XXL | dict(vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
VAE_SMOKE = SDXL_VAE | dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, layers_per_block=1)
CLIP_SMOKE = CLIP_VIT_L_336 | dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
CLIP_SMOKE |= dict(image_size=28, projection_dim=16)
LLAMA_SMOKE = VICUNA_7B | dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
LLAMA_SMOKE |= dict(num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
LLAVA_SMOKE = LLAVA_15 | dict(image_token_index=250, pad_token_id=0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to build and measure; ``full()`` on a GPU, ``smoke()`` anywhere in seconds."""

    name: str
    t5: dict
    t5_lengths: tuple[int, ...]  # max_length settings
    t5_captions: int
    t5_batch_size: int
    vae: dict
    vae_runs: tuple[tuple[int, int], ...]  # (square bucket side, batch size)
    clip: dict
    llama: dict
    llava: dict
    llava_runs: tuple[tuple[int, int], ...]  # (batch size, new tokens)
    llava_text_tokens: int  # prompt tokens besides the image tokens (chat template + instruction)
    warmup_steps: int
    seconds_per_run: float
    model_budget_s: dict[str, float]

    @classmethod
    def full(cls) -> Plan:
        return cls(
            name="full",
            t5=T5_XXL,
            t5_lengths=(120, 300),
            t5_captions=1024,
            t5_batch_size=64,
            vae=SDXL_VAE,
            vae_runs=((512, 8), (512, 32), (1024, 4), (1024, 16), (2048, 1), (2048, 4)),
            clip=CLIP_VIT_L_336,
            llama=VICUNA_7B,
            llava=LLAVA_15,
            llava_runs=((16, 64), (64, 64), (32, 300)),
            llava_text_tokens=60,
            warmup_steps=2,
            seconds_per_run=8.0,
            model_budget_s={"t5": 75.0, "vae": 90.0, "llava": 120.0},  # init included; ~5 min in all at most
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            name="smoke (tiny shapes of the same architectures)",
            t5=T5_SMOKE,
            t5_lengths=(12, 24),
            t5_captions=12,
            t5_batch_size=4,
            vae=VAE_SMOKE,
            vae_runs=((32, 1), (64, 2)),
            clip=CLIP_SMOKE,
            llama=LLAMA_SMOKE,
            llava=LLAVA_SMOKE,
            llava_runs=((2, 3), (2, 6)),
            llava_text_tokens=6,
            warmup_steps=1,
            seconds_per_run=0.05,
            model_budget_s={"t5": 30.0, "vae": 30.0, "llava": 30.0},
        )


@dataclasses.dataclass(frozen=True)
class Work:
    """One step's pinned host inputs, with the FLOPs and the items (captions, images) it covers."""

    inputs: tuple
    flops: float
    items: int


@dataclasses.dataclass
class Bench:
    """Device, dtype and the results file, rewritten after every measurement."""

    device: torch.device
    dtype: torch.dtype
    compile: bool
    out: Path
    results: dict

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type

    def pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.results, indent=1) + "\n")
        os.replace(partial, self.out)

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


# --- Measuring --------------------------------------------------------------------------------------------


def timed_steps(
    bench: Bench,
    step: Callable[[tuple], object],
    work: list[Work],
    plan: Plan,
    warmup_step: Callable[[tuple], object] | None = None,
) -> dict:
    """Warm up, then run steps cycling over ``work`` for ``plan.seconds_per_run`` (at least one step).

    Every step is synchronised, as a stage's batch is (its outputs are read on the host).
    """
    bench.free_memory()
    start = time.perf_counter()
    for index in range(plan.warmup_steps):
        (warmup_step or step)(work[index % len(work)].inputs)
    bench.sync()
    warmup_s = time.perf_counter() - start
    done: list[Work] = []
    step_seconds: list[float] = []
    while not done or sum(step_seconds) < plan.seconds_per_run:
        item = work[len(done) % len(work)]
        begin = time.perf_counter()
        step(item.inputs)
        bench.sync()
        step_seconds.append(time.perf_counter() - begin)
        done.append(item)
    seconds = sum(step_seconds)
    total_flops = sum(item.flops for item in done)
    items = sum(item.items for item in done)
    return {
        "steps": len(done),
        "items": items,
        "seconds": round(seconds, 4),
        "items_per_s": items / seconds,
        "ms_per_step_median": round(1000 * statistics.median(step_seconds), 3),
        "flops": total_flops,
        "flops_per_item": total_flops / items,
        "flops_per_s": total_flops / seconds,
        "mfu": flops.mfu(total_flops, seconds, bench.device_name, bench.dtype),
        "max_memory_gib": (
            round(torch.cuda.max_memory_allocated(bench.device) / 2**30, 2) if bench.device.type == "cuda" else None
        ),
        "warmup_s": round(warmup_s, 3),
    }


def run_measurement(bench: Bench, record: dict, name: str, unit: str, settings: dict, measure) -> None:
    """Append one measurement (or its error) to ``record`` and save; a failure does not stop the others."""
    entry = {"name": name, "unit": unit, "settings": settings}
    try:
        with torch.inference_mode():
            entry |= measure()
    except torch.cuda.OutOfMemoryError:
        entry["error"] = "out of GPU memory"
    except Exception as error:  # keep the other measurements of a long run
        entry["error"] = f"{type(error).__name__}: {error}"
    record["measurements"].append(entry)
    bench.save()
    print(f"  {name}: {_summary(entry)}", flush=True)


def _summary(entry: dict) -> str:
    if "error" in entry or "skipped" in entry:
        return entry.get("error") or entry["skipped"]
    mfu = f"{100 * entry['mfu']:.1f}%" if entry["mfu"] is not None else "n/a"
    return f"{entry['items_per_s']:.2f} {entry['unit']}, {entry['flops_per_s'] / 1e12:.1f} TFLOP/s, MFU {mfu}"


def model_record(bench: Bench, plan: Plan, key: str, description: str) -> dict:
    record = {"model": description if plan.name == "full" else f"{description}; {plan.name}", "measurements": []}
    bench.results["models"][key] = record
    return record


def _from_config(model_class, config, dtype: torch.dtype):
    """Random weights built directly on the device (a 7B model initialised on a CPU would take minutes)."""
    try:
        return model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    except TypeError:  # transformers 4.x spells it torch_dtype
        return model_class._from_config(config, torch_dtype=dtype, attn_implementation="sdpa")


def describe_model(record: dict, model: torch.nn.Module, init_s: float) -> None:
    record["params"] = sum(parameter.numel() for parameter in model.parameters())
    record["init_s"] = round(init_s, 2)
    record["attn_implementation"] = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")


def within_budget(bench: Bench, record: dict, name: str, settings: dict, deadline: float) -> bool:
    if time.perf_counter() < deadline:
        return True
    record["measurements"].append({"name": name, "settings": settings, "skipped": "model time budget spent"})
    bench.save()
    print(f"  {name}: skipped (model time budget spent)", flush=True)
    return False


# --- T5 ---------------------------------------------------------------------------------------------------


def caption_lengths(count: int, max_length: int, seed: int = 0) -> list[int]:
    """Token counts (EOS included) of dense captions: mean ~55% of max_length, the longest truncated at it."""
    rng = random.Random(seed)
    return [min(max_length, max(8, round(rng.gauss(0.55 * max_length, 0.25 * max_length)))) for _ in range(count)]


def padded_lengths(lengths: list[int], batch_size: int, sort: bool, max_length: int) -> list[list[int]]:
    """Micro-batches of caption lengths and the length each is padded to (first element of each list)."""
    order = sorted(lengths, reverse=True) if sort else list(lengths)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [[max(chunk) if sort else max_length, *chunk] for chunk in chunks]


def t5_batches(bench: Bench, config, lengths: list[int], batch_size: int, sort: bool, max_length: int) -> list[Work]:
    """Token ids + mask per micro-batch, padded to its longest caption (sorted) or to max_length."""
    generator = torch.Generator().manual_seed(0)
    work = []
    for padded, *chunk in padded_lengths(lengths, batch_size, sort, max_length):
        ids = torch.randint(3, config.vocab_size, (len(chunk), padded), generator=generator)
        mask = torch.zeros(len(chunk), padded, dtype=torch.long)
        for row, length in enumerate(chunk):
            ids[row, length - 1] = 1  # EOS
            ids[row, length:] = 0  # pad
            mask[row, :length] = 1
        inputs = (bench.pinned(ids), bench.pinned(mask))
        work.append(Work(inputs, flops.t5_encoder_flops(config, [padded] * len(chunk)), len(chunk)))
    random.Random(1).shuffle(work)  # a time-boxed partial pass still sees short and long batches
    return work


def bench_t5(bench: Bench, plan: Plan) -> None:
    from transformers import T5Config, T5EncoderModel

    record = model_record(bench, plan, "t5", "T5-v1.1-XXL encoder (google/t5-v1_1-xxl config), random weights")
    deadline = time.perf_counter() + plan.model_budget_s["t5"]
    config = T5Config(**plan.t5, is_encoder_decoder=False, use_cache=False)
    start = time.perf_counter()
    with torch.device(bench.device):
        model = _from_config(T5EncoderModel, config, bench.dtype).eval()
    bench.sync()
    describe_model(record, model, time.perf_counter() - start)
    encoder = torch.compile(model, dynamic=True) if bench.compile else model
    record["compiled"] = bench.compile

    def step(inputs: tuple) -> torch.Tensor:
        ids, mask = (bench.to_device(tensor) for tensor in inputs)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.to(torch.float16).to("cpu", non_blocking=True)

    for max_length in plan.t5_lengths:
        lengths = caption_lengths(plan.t5_captions, max_length)
        for batching, sort in (("length_sorted", True), ("padded_to_max", False)):
            name = f"t5_{max_length}_{batching}"
            settings = {"max_length": max_length, "batching": batching, "batch_size": plan.t5_batch_size}
            batches = padded_lengths(lengths, plan.t5_batch_size, sort, max_length)
            computed_tokens = sum(batch[0] * (len(batch) - 1) for batch in batches)
            settings |= {"caption_tokens_mean": round(sum(lengths) / len(lengths), 1)}
            settings |= {"real_token_fraction": round(sum(lengths) / computed_tokens, 3)}
            if not within_budget(bench, record, name, settings, deadline):
                continue

            def measure(lengths=lengths, sort=sort, max_length=max_length) -> dict:
                work = t5_batches(bench, config, lengths, plan.t5_batch_size, sort, max_length)
                steps = timed_steps(bench, step, work, plan)
                return {"batch_size": plan.t5_batch_size} | steps

            run_measurement(bench, record, name, "captions/s", settings, measure)


# --- VAE --------------------------------------------------------------------------------------------------


def import_diffusers():
    """diffusers if installed, else from wheels carried in ``.cache/gpu-wheels`` (``make gpu-wheels``)."""
    try:
        return importlib.import_module("diffusers")
    except ImportError as error:
        missing = error
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise ModuleNotFoundError(
            f"diffusers is not importable ({missing}) and {WHEELS} holds no wheels: on a machine with network run "
            "`make gpu-wheels` (GPU_PYTHON=3.x GPU_ARCH=x86_64|aarch64 to match this machine), copy "
            ".cache/gpu-wheels into this checkout here and rerun"
        )
    site = WHEELS / "site"
    for wheel in wheels:  # unpacked, not zip-imported: Pillow and friends are binary
        marker = site / f".unpacked-{wheel.name}"
        if not marker.exists():
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
            marker.touch()
    for name in [name for name in sys.modules if name.split(".")[0] in ("diffusers", "PIL")]:
        del sys.modules[name]  # half-imported by the failed attempt
    sys.path.append(str(site))  # after site-packages: installed versions win
    importlib.invalidate_caches()
    return importlib.import_module("diffusers")


def vae_inputs(bench: Bench, side: int, batch_size: int) -> list[Work]:
    """Two distinct uint8 HWC batches, as the preparation step hands them to the VAE stage."""
    generator = torch.Generator().manual_seed(side + batch_size)
    return [
        (bench.pinned(torch.randint(0, 256, (batch_size, side, side, 3), dtype=torch.uint8, generator=generator)),)
        for _ in range(2)
    ]


def bench_vae(bench: Bench, plan: Plan) -> None:
    record = model_record(bench, plan, "vae", "SDXL VAE encoder (stabilityai/sdxl-vae config), random weights")
    diffusers = import_diffusers()  # before the clock: unpacking carried wheels is a one-time cost
    deadline = time.perf_counter() + plan.model_budget_s["vae"]
    diffusers.utils.logging.set_verbosity_error()  # its float32-modules notice about .to(dtype) on a random VAE
    bench.results["environment"]["diffusers"] = diffusers.__version__
    start = time.perf_counter()
    with torch.device(bench.device):
        vae = diffusers.AutoencoderKL(**plan.vae)
    vae = vae.to(dtype=bench.dtype, memory_format=torch.channels_last).eval()
    bench.sync()
    describe_model(record, vae.encoder, time.perf_counter() - start)
    if bench.compile:
        vae.encoder = torch.compile(vae.encoder)
    record["compiled"] = bench.compile
    torch.backends.cudnn.benchmark = True  # one shape per (bucket, batch): autotuned in the warmup

    def step(inputs: tuple) -> torch.Tensor:
        # NHWC bytes permuted to NCHW are channels_last already; the conversions keep that layout.
        pixels = bench.to_device(inputs[0]).permute(0, 3, 1, 2).to(bench.dtype).div(127.5).sub(1)
        posterior = vae.encode(pixels.contiguous(memory_format=torch.channels_last)).latent_dist
        moments = torch.cat([posterior.mean, posterior.std], dim=1).to(torch.float16)
        return moments.to("cpu", non_blocking=True)

    for side, batch_size in plan.vae_runs:
        name = f"vae_{side}_b{batch_size}"
        settings = {"bucket": [side, side], "batch_size": batch_size}
        if not within_budget(bench, record, name, settings, deadline):
            continue

        def measure(side=side, batch_size=batch_size) -> dict:
            per_image = flops.vae_encoder_flops(vae.config, side, side)
            work = [Work(inputs, per_image * batch_size, batch_size) for inputs in vae_inputs(bench, side, batch_size)]
            steps = timed_steps(bench, step, work, plan)
            return {"batch_size": batch_size} | steps

        run_measurement(bench, record, name, "images/s", settings, measure)


# --- LLaVA ------------------------------------------------------------------------------------------------


def llava_prompt(config, batch_size: int, image_tokens: int, text_tokens: int) -> torch.Tensor:
    """BOS, a few template tokens, the image tokens, then the instruction: llava-1.5's prompt layout."""
    generator = torch.Generator().manual_seed(batch_size)
    text = torch.randint(3, config.image_token_index, (batch_size, text_tokens), generator=generator)
    image = torch.full((batch_size, image_tokens), config.image_token_index)
    head = 4  # "<s>USER:" before the image
    return torch.cat([text[:, :head], image, text[:, head:]], dim=1)


def bench_llava(bench: Bench, plan: Plan) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    record = model_record(bench, plan, "llava", "LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf config), random weights")
    deadline = time.perf_counter() + plan.model_budget_s["llava"]
    vision, text = CLIPVisionConfig(**plan.clip), LlamaConfig(**plan.llama, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), **plan.llava)
    start = time.perf_counter()
    with torch.device(bench.device):
        model = _from_config(LlavaForConditionalGeneration, config, bench.dtype).eval()
    bench.sync()
    describe_model(record, model, time.perf_counter() - start)
    record["compiled"] = False
    if bench.compile:
        record["note"] = "generate is not compiled (it would need a static KV cache)"
    side = config.vision_config.image_size
    image_tokens = (side // config.vision_config.patch_size) ** 2

    def step(inputs: tuple, new_tokens: int) -> torch.Tensor:
        ids, pixels = (bench.to_device(tensor) for tensor in inputs)
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=config.pad_token_id,
            eos_token_id=text.eos_token_id,
        )
        if output.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"generated {output.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
        return output[:, ids.shape[1] :].to("cpu", non_blocking=True)

    for batch_size, new_tokens in plan.llava_runs:
        name = f"llava_b{batch_size}_new{new_tokens}"
        settings = {"batch_size": batch_size, "new_tokens": new_tokens, "text_tokens": plan.llava_text_tokens}
        settings["prompt_tokens"] = image_tokens + plan.llava_text_tokens
        if not within_budget(bench, record, name, settings, deadline):
            continue

        def measure(batch_size=batch_size, new_tokens=new_tokens) -> dict:
            ids = llava_prompt(config, batch_size, image_tokens, plan.llava_text_tokens)
            pixels = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(0))
            inputs = (bench.pinned(ids), bench.pinned(pixels.to(bench.dtype)))
            total = flops.llava_generate_flops(config, batch_size, ids.shape[1], new_tokens)
            work = [Work(inputs, total, batch_size)]
            # Warm up with a 2-token generation: same kernels and batch size, without paying for a full one.
            steps = timed_steps(bench, lambda x: step(x, new_tokens), work, plan, warmup_step=lambda x: step(x, 2))
            return {"batch_size": batch_size} | steps

        run_measurement(bench, record, name, "images/s", settings, measure)


# --- Driver -----------------------------------------------------------------------------------------------


def environment(bench: Bench) -> dict:
    import transformers

    return {
        "device": bench.device_name,
        "dtype": str(bench.dtype).removeprefix("torch."),
        "peak_flops": flops.peak_flops(bench.device_name, bench.dtype),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "diffusers": None,
        "python": platform.python_version(),
        "compile": bench.compile,
    }


def print_table(results: dict) -> None:
    print(f"\n{'measurement':<28}{'items/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'GiB':>8}")
    for model in results["models"].values():
        if "error" in model:
            print(f"{model['model'][:27]:<28}{model['error'][:60]}")
        for entry in model["measurements"]:
            if "items_per_s" not in entry:
                print(f"{entry['name']:<28}{entry.get('error') or entry.get('skipped')}")
                continue
            mfu = f"{100 * entry['mfu']:.1f}%" if entry["mfu"] is not None else "n/a"
            memory = f"{entry['max_memory_gib']:.1f}" if entry["max_memory_gib"] is not None else "n/a"
            print(
                f"{entry['name']:<28}{entry['items_per_s']:>10.2f}{entry['flops_per_s'] / 1e12:>10.2f}"
                f"{mfu:>8}{memory:>8}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results_gpu.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU unless --device says otherwise")
    parser.add_argument("--compile", action="store_true", help="torch.compile the T5 and VAE encoders")
    parser.add_argument("--only", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA device (or --smoke for a CPU check of the script)", file=sys.stderr)
        return 2
    plan = Plan.smoke() if args.smoke else Plan.full()
    if args.compile:
        budgets = {key: s + COMPILE_ALLOWANCE_S * (key != "llava") for key, s in plan.model_budget_s.items()}
        plan = dataclasses.replace(plan, model_budget_s=budgets)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = {"schema": 1, "smoke": args.smoke, "started": datetime.now(UTC).isoformat(timespec="seconds")}
    bench = Bench(device, dtype, args.compile, args.out, results | {"environment": {}, "models": {}})
    bench.results["environment"] = environment(bench)
    print(f"{bench.device_name}, {bench.results['environment']['dtype']} → {args.out}", flush=True)
    runners = {"t5": bench_t5, "vae": bench_vae, "llava": bench_llava}
    for key in [name.strip() for name in args.only.split(",") if name.strip()]:
        print(f"[{key}]", flush=True)
        try:
            runners[key](bench, plan)
        except Exception as error:  # e.g. diffusers missing: the other models still run
            record = bench.results["models"].setdefault(key, {"model": key, "measurements": []})
            record["error"] = f"{type(error).__name__}: {error}"
            print(f"  {record['error']}", flush=True)
        bench.free_memory()  # the runner's model went with its frame
        bench.save()
    print_table(bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
