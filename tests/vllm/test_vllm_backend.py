"""The vLLM caption backend through ray.data.llm on the tiny LLaVA-1.5, against the HF backend (vLLM venv only).

One engine serves every case (engine start-up dominates on CPU): distinct noise images with and without alt
text, a row with unreadable pixels, a row whose prompt is too long for the engine, and rows that are not OK.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from curation.config import CaptionConfig, CaptionJob, ModelRef, Resources
from curation.records import FAILED, OK, REJECTED, ROW_SCHEMA, Row, mark, new_row, put_pixels, rows_to_table
from curation.stages.caption import CaptionStage
from pipelines.ray_stages import StatsRecorder
from pipelines.vllm_caption import add_vllm_caption


def vllm_installed() -> bool:
    # Not ``import vllm``: with tests/ on sys.path, this folder is itself a namespace package named vllm.
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


pytestmark = [
    pytest.mark.skipif(not vllm_installed(), reason="vLLM backend: runs in the vLLM venv (make test-vllm)"),
    pytest.mark.timeout(900),  # the engine's start-up (~1 min on 2 idle cores) is slow on a loaded machine
]

SIZES = [(96, 72), (40, 120), (64, 64), (200, 50), (72, 96), (33, 77), (128, 96), (50, 50)]
CAPTION_COLUMNS = ("status", "captions", "caption_status", "caption_tokens", "caption_flags")
TOO_LONG_ALT = "word " * 700  # more tokens than the tiny model's 512 positions


def noise_row(key: str, seed: int, size: tuple[int, int], alt: str | None = None) -> Row:
    """A row as the filter stage leaves it: prepared caption pixels (seeded noise), no decode needed."""
    row = new_row(key, f"mem://{key}", b"encoded image bytes", alt=alt)
    put_pixels(row, "caption", np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return row


def ok_rows() -> list[Row]:
    return [noise_row(f"k{i}", i, size, alt="a hint" if i % 3 == 0 else None) for i, size in enumerate(SIZES)]


def special_rows() -> list[Row]:
    unreadable = noise_row("unreadable", 90, (8, 8))
    unreadable["caption_shape"] = [9, 9, 3]
    too_long = noise_row("too_long", 91, (16, 16), alt=TOO_LONG_ALT)
    rejected = mark(noise_row("rejected", 92, (8, 8)), REJECTED, "filter", "too_small", "8x8")
    failed = mark(noise_row("failed", 93, (8, 8)), FAILED, "filter", "error", "boom")
    return [unreadable, too_long, rejected, failed]


def config(tiny_models: Path) -> CaptionConfig:
    return CaptionConfig(
        model=ModelRef(path=str(tiny_models / "llava"), device="cpu", dtype="float32"),
        resources=Resources(num_gpus=0, batch_size=4),
        jobs={
            "dense": CaptionJob(max_new_tokens=12),
            "short": CaptionJob(prompt="Name the main subject.", prompt_with_alt=None, max_new_tokens=5),
        },
        # Every job's retry runs up front in the vLLM backend; the tiny model's loops get most captions retried.
        quality={"policy": "retry"},
    )


@pytest.fixture(scope="module")
def vllm_run(tiny_models: Path, ray_session):
    import ray
    import ray.data

    recorder = StatsRecorder.remote()
    dataset = ray.data.from_arrow(rows_to_table(ok_rows() + special_rows()), override_num_blocks=3)
    captioned = add_vllm_caption(dataset, config(tiny_models), recorder=recorder).materialize()
    rows = {row["key"]: row for row in captioned.take_all()}
    return captioned.schema(), rows, ray.get(recorder.snapshot.remote())["stages"]


@pytest.fixture(scope="module")
def vllm_output(vllm_run):
    schema, rows, _ = vllm_run
    return schema, rows


@pytest.fixture(scope="module")
def hf_rows(tiny_models: Path) -> dict[str, Row]:
    stage = CaptionStage(config(tiny_models))
    stage.setup()
    rows = ok_rows()
    stage.process_batch(rows)
    return {row["key"]: row for row in rows}


def test_greedy_captions_equal_the_hf_backends(vllm_output, hf_rows: dict[str, Row]) -> None:
    _, rows = vllm_output
    for key, expected in hf_rows.items():
        assert expected["status"] == OK, expected["detail"]
        assert {c: rows[key][c] for c in CAPTION_COLUMNS} == {c: expected[c] for c in CAPTION_COLUMNS}, key
    dense = [json.loads(row["captions"])["dense"] for row in hf_rows.values()]
    # The comparison is not trivial: captions depend on the image (the random model's loops make a few collide).
    assert len(set(dense)) > len(SIZES) // 2, dense
    assert json.loads(rows["k0"]["captions"])["alt"] == "a hint"


def test_a_request_the_engine_refuses_fails_its_row_alone(vllm_output) -> None:
    _, rows = vllm_output
    too_long = rows["too_long"]
    assert (too_long["status"], too_long["stage"], too_long["reason"]) == (FAILED, "caption", "error")
    assert too_long["detail"].startswith("dense: ") and "maximum context length is 512" in too_long["detail"]
    assert json.loads(too_long["caption_status"]) == {"dense": "error"}
    assert sum(row["status"] == OK for row in rows.values()) == len(SIZES)


def test_unreadable_pixels_fail_before_the_engine(vllm_output) -> None:
    _, rows = vllm_output
    unreadable = rows["unreadable"]
    assert (unreadable["status"], unreadable["stage"], unreadable["reason"]) == (FAILED, "caption", "error")
    assert "cannot reshape array of size 192 into shape (9,9,3)" in unreadable["detail"]
    assert unreadable["caption_status"] is None


def test_rows_that_are_not_ok_pass_through_untouched(vllm_output) -> None:
    _, rows = vllm_output
    for key, before in (("rejected", special_rows()[2]), ("failed", special_rows()[3])):
        after = rows[key]
        assert {c: after[c] for c in ("status", "stage", "reason", "detail", "source", "alt", "captions")} == {
            c: before[c] for c in ("status", "stage", "reason", "detail", "source", "alt", "captions")
        }


def test_every_row_comes_out_once_in_the_row_schema(vllm_output) -> None:
    schema, rows = vllm_output
    assert sorted(rows) == sorted(row["key"] for row in ok_rows() + special_rows())
    assert schema.names == ROW_SCHEMA.names
    assert list(schema.types) == list(ROW_SCHEMA.types)
    assert all(row["caption_pixels"] is None for row in rows.values())  # consumed by the caption stage


def test_the_run_statistics_count_the_stage(vllm_run) -> None:
    _, _, stages = vllm_run
    caption = stages["caption"]
    # Rows that entered OK: the images, the too-long prompt and the unreadable pixels (not the rejected/failed).
    assert caption["rows_in"] == len(SIZES) + 2
    assert caption["rows_out"] == {"failed": 2, "ok": len(SIZES)}
    assert caption["active_seconds"] > 0 and caption["rows_per_s"] > 0
