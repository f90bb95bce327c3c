"""``benchmarks/gpu.py --smoke`` on the CPU: the GPU benchmark script runs end to end and writes its schema.

The real run needs a CUDA GPU; this checks that the script (model building, batching, timing, FLOP
accounting, JSON) does not crash, with tiny shapes of the same architectures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENT_KEYS = {
    "name",
    "unit",
    "settings",
    "batch_size",
    "steps",
    "items",
    "seconds",
    "items_per_s",
    "ms_per_step_median",
    "flops",
    "flops_per_item",
    "flops_per_s",
    "mfu",
    "max_memory_gib",
    "warmup_s",
}


def test_smoke_run_writes_every_measurement(tmp_path):
    out = tmp_path / "results_gpu.json"
    command = [sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["schema"] == 1 and results["smoke"] is True
    environment = results["environment"]
    assert environment["device"] == "cpu" and environment["dtype"] == "float32"
    assert environment["peak_flops"] is None and environment["diffusers"]  # no peak known for a CPU
    assert list(results["models"]) == ["t5", "vae", "llava"]
    names = {key: [entry["name"] for entry in model["measurements"]] for key, model in results["models"].items()}
    assert names == {
        "t5": ["t5_12_length_sorted", "t5_12_padded_to_max", "t5_24_length_sorted", "t5_24_padded_to_max"],
        "vae": ["vae_32_b1", "vae_64_b2"],
        "llava": ["llava_b2_new3", "llava_b2_new6"],
    }
    for model in results["models"].values():
        assert "error" not in model and model["params"] > 0 and model["compiled"] is False
        for entry in model["measurements"]:
            assert set(entry) == MEASUREMENT_KEYS, entry
            assert entry["flops_per_s"] > 0 and entry["items_per_s"] > 0 and entry["mfu"] is None
            assert entry["items"] == entry["steps"] * entry["batch_size"] or entry["unit"] == "captions/s"
            assert entry["flops"] == entry["flops_per_item"] * entry["items"]
    t5 = {entry["name"]: entry for entry in results["models"]["t5"]["measurements"]}
    # Padding to max_length computes max_length tokens per caption; sorting pads far less.
    sorted_24, padded_24 = t5["t5_24_length_sorted"]["settings"], t5["t5_24_padded_to_max"]["settings"]
    assert padded_24["real_token_fraction"] == round(padded_24["caption_tokens_mean"] / 24, 3)
    assert sorted_24["real_token_fraction"] > padded_24["real_token_fraction"]
    llava = results["models"]["llava"]["measurements"]
    assert [entry["settings"]["prompt_tokens"] for entry in llava] == [(28 // 14) ** 2 + 6] * 2  # image + text
    assert "t5_24_padded_to_max" in completed.stdout  # the closing table
