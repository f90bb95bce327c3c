"""The caption stage on Ray: 1 or 2 caption actors, any block split, the captions of a row depend on its image
only (and every caption comes back on its own key)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from curation.config import CaptionConfig, CaptionJob, ModelRef, Resources
from curation.records import Row, new_row, put_pixels, rows_to_table
from curation.stages.caption import CaptionStage
from pipelines.ray_stages import StatsRecorder, apply_stage

SIZES = [(96, 72), (40, 120), (64, 64), (200, 50), (72, 96), (33, 77), (128, 96), (50, 50)]
ROWS = 12
CAPTION_COLUMNS = ("captions", "caption_status", "caption_tokens", "caption_flags")


def rows() -> list[Row]:
    out = []
    for i in range(ROWS):
        width, height = SIZES[i % len(SIZES)]
        row = new_row(f"k{i:02d}", f"mem://k{i:02d}", b"unused: the stage reads prepared pixels")
        row["alt"] = "a hint" if i % 4 == 0 else None
        put_pixels(row, "caption", np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8))
        out.append(row)
    return out


def config(tiny_models: Path, workers: int, batch_size: int) -> CaptionConfig:
    return CaptionConfig(
        model=ModelRef(path=str(tiny_models / "llava"), device="cpu", dtype="float32"),
        resources=Resources(num_cpus=0.5, num_gpus=0, num_workers=workers, batch_size=batch_size, rows_per_block=2),
        jobs={"dense": CaptionJob(max_new_tokens=8), "short": CaptionJob(max_new_tokens=4)},
    )


@pytest.fixture(scope="module")
def one_by_one(tiny_models: Path) -> dict[str, dict]:
    stage = CaptionStage(config(tiny_models, 1, 1))
    stage.setup()
    expected = {}
    for row in rows():
        stage.process_batch([row])
        expected[row["key"]] = {column: row[column] for column in CAPTION_COLUMNS}
    return expected


@pytest.mark.parametrize(("workers", "batch_size"), [(1, 3), (2, 2)])
def test_caption_actors_write_what_one_by_one_writes(tiny_models, ray_session, one_by_one, workers, batch_size):
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    previous, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 300  # every actor up before work
    recorder = StatsRecorder.remote()
    try:
        dataset = ray.data.from_arrow(rows_to_table(rows()), override_num_blocks=ROWS // 2).materialize()
        factory = functools.partial(CaptionStage, config(tiny_models, workers, batch_size))
        captioned = {row["key"]: row for row in apply_stage(dataset, factory, recorder).take_all()}
        stats = ray.get(recorder.snapshot.remote())["stages"]["caption"]
    finally:
        context.wait_for_min_actors_s = previous
        ray.kill(recorder)
    assert stats["workers"] == workers and stats["rows_in"] == ROWS
    assert sorted(captioned) == sorted(one_by_one)
    for key, expected in one_by_one.items():
        assert {column: captioned[key][column] for column in CAPTION_COLUMNS} == expected, key
    dense = [json.loads(row["captions"])["dense"] for row in captioned.values()]
    assert len(set(dense)) > ROWS // 2  # captions depend on the image: the comparison is not trivial
