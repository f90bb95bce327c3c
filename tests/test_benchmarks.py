"""The benchmarks only mean something if both sides compute the same thing: check that, and the results format."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from transformers import T5EncoderModel, T5Tokenizer

from benchmarks.memory import PeakPSS, wait_for_samples
from benchmarks.t5 import EQUIVALENCE_ATOL, bench_t5, pixart_t5, pseudo_captions
from curation.config import ModelRef, Resources, T5Config
from curation.stages.t5 import T5Stage

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 64  # some captions below are longer: truncation is compared too
ROW_NAMES = [
    "t5_vs_pixart_sigma_procedure",
    "bytes_vs_pixart_sigma_native",
    "vae_vs_one_at_a_time",
    "gpu_actor_cpu_ms_per_image",
    "decode_resize_vs_naive",
    "pipeline_vs_sum_of_stages",
    "peak_memory_2000_vs_200_inputs",
    "caption_vs_per_image_loop",
]


def test_t5_comparison_sides_compute_the_same_real_token_features(tiny_models: Path) -> None:
    model_dir = tiny_models / "pixart_sigma"
    captions = pseudo_captions(6, min_words=1, max_words=80, seed=1)

    row, _ = bench_t5(model_dir, captions, batch_size=4, repeats=1, max_length=MAX_LENGTH)

    assert row["equivalent"] and row["details"]["token_counts_match"]
    assert row["details"]["max_abs_diff_fp32"] <= EQUIVALENCE_ATOL
    assert row["details"]["tokens"]["max"] == MAX_LENGTH  # the long captions were truncated on both sides

    # Independently of the row: each side, loaded on its own, caption by caption.
    stage = T5Stage(
        T5Config(
            model=ModelRef(path=str(model_dir), device="cpu", dtype="float32"),
            resources=Resources(batch_size=4, num_gpus=0),
            max_length=MAX_LENGTH,
        )
    )
    tokenizer = T5Tokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder").eval()
    ours = stage.encode(captions, dtype=np.float32)
    theirs = pixart_t5(tokenizer, encoder, captions, batch_size=1, max_length=MAX_LENGTH)
    for (features, n_tokens, _), (padded, mask) in zip(ours, theirs, strict=True):
        assert padded.shape == (1, MAX_LENGTH, 32)
        real = padded[0][mask[0].astype(bool)]
        assert features.shape == real.shape == (n_tokens, 32)
        np.testing.assert_allclose(features, real, rtol=0, atol=EQUIVALENCE_ATOL)


def test_peak_pss_counts_a_child_process() -> None:
    """A child that touches 160 MiB raises the tree's peak PSS by at least that much."""
    child = textwrap.dedent(
        """
        import sys, time
        block = bytearray(160 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        print("ready", flush=True)
        time.sleep(1.0)
        """
    )
    with PeakPSS(interval_s=0.05) as peak:
        wait_for_samples(peak)
        before = peak.peak_bytes
        process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        process.wait(timeout=30)
    assert peak.peak_bytes - before >= 160 * 2**20


def test_quick_bench_writes_every_row_with_equivalent_sides(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=ROOT, check=True, timeout=600
    )
    results = json.loads(out.read_text())

    assert [row["name"] for row in results["comparisons"]] == ROW_NAMES
    for row in results["comparisons"]:
        assert {"name", "unit", "baseline", "ours", "ratio", "target", "met", "equivalent", "note"} <= set(row)
        assert row["unit"] in {"s", "ms", "bytes", "MiB"}
        assert row["baseline"] > 0 and row["ours"] > 0
        assert abs(row["ratio"] - row["baseline"] / row["ours"]) <= 1e-3 * row["ratio"]
        assert row["met"] == (row["ratio"] >= row["target"])
        assert row["equivalent"] is True, row["name"]
        assert row["note"]
    assert results["quick"] is True
    assert {"cpu_count", "torch", "ray"} <= set(results["machine"])
    assert "start" in results["load_average_1min"] and "end" in results["load_average_1min"]
    assert isinstance(results["scaling"], dict)
