"""The demo built with every scorer on (tiny CLIP, LAION aesthetic head, NSFW and watermark classifiers) on
the embedded Ray: scores land in the sample json and the index; thresholds reject exactly the samples whose
scores (from the run without thresholds) cross them, with thumbnails except for nsfw."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.cli import main
from curation.config import AESTHETIC_WEIGHTS_FILE
from tests.dataset_compare import sample_json

SCORED = ("aesthetic", "nsfw", "watermark")


def scorer_settings(tiny_models: Path) -> list[str]:
    scorers = tiny_models / "scorers"
    settings = {
        "scorers.clip.path": scorers / "clip",
        "scorers.aesthetic.model.path": scorers / "aesthetic" / AESTHETIC_WEIGHTS_FILE,
        "scorers.nsfw.model.path": scorers / "nsfw",
        "scorers.watermark.model.path": scorers / "watermark",
        "scorers.clip_similarity.enabled": "true",
        "scorers.resources.num_gpus": 0,
        "scorers.resources.num_cpus": 0.5,
    }
    return [f"--set={name}={value}" for name, value in settings.items()]


def build(demo_build_args: list[str], tiny_models: Path, output: Path, *extra: str) -> Path:
    args = list(demo_build_args)
    args[args.index("--output") + 1] = str(output)
    assert main([*args, *scorer_settings(tiny_models), *extra]) == 0
    return output


def table(output: Path, folder: str) -> list[dict]:
    return [row for path in sorted((output / folder).glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def scored(demo_build_args, tiny_models, ray_session, tmp_path_factory) -> Path:
    return build(demo_build_args, tiny_models, tmp_path_factory.mktemp("scored") / "out")


def test_every_written_sample_has_its_scores_in_json_and_index(scored, demo_dataset):
    manifest = json.loads((scored / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["dedup", "read", "filter", "scorers", "vae", "caption", "t5", "write"]
    assert manifest["stages"]["scorers"]["rows_in"] == manifest["stages"]["filter"]["rows_out"]["ok"]
    index = table(scored, "index")
    unscored = {row["key"] for row in table(demo_dataset, "index")}
    assert {row["key"] for row in index} == unscored  # no thresholds: scoring rejects nothing
    sample_scores = {key: meta["scores"] for key, meta in sample_json(scored).items()}
    for row in index:
        assert math.isfinite(row["score_aesthetic"]), row["key"]
        assert 0 <= row["score_nsfw"] <= 1 and 0 <= row["score_watermark"] <= 1, row["key"]  # probabilities
        in_json = sample_scores[row["key"]]
        assert in_json == {name: row[f"score_{name}"] for name in in_json}
        assert set(in_json) == {*SCORED, *(["clip_similarity"] if row["score_clip_similarity"] is not None else [])}
    with_alt = [row for row in index if row["score_clip_similarity"] is not None]
    assert 0 < len(with_alt) < len(index)  # only the samples with a sidecar caption get the similarity
    assert all(-1 <= row["score_clip_similarity"] <= 1 for row in with_alt)


def test_thresholds_reject_exactly_the_samples_past_them(scored, demo_build_args, tiny_models, tmp_path):
    scores = {row["key"]: row for row in table(scored, "index")}
    nsfw_max = statistics.median(row["score_nsfw"] for row in scores.values())
    aesthetic_min = statistics.median(row["score_aesthetic"] for row in scores.values())
    output = build(
        demo_build_args, tiny_models, tmp_path / "out",
        f"--set=scorers.nsfw.max={nsfw_max!r}", f"--set=scorers.aesthetic.min={aesthetic_min!r}",
    )  # fmt: skip

    expected = {}
    for key, row in scores.items():
        if row["score_aesthetic"] < aesthetic_min:  # rules are checked in SCORE_NAMES order
            expected[key] = "aesthetic"
        elif row["score_nsfw"] > nsfw_max:
            expected[key] = "nsfw"
    assert "aesthetic" in expected.values() and "nsfw" in expected.values()
    rejects = {row["key"]: row for row in table(output, "rejects") if row["stage"] == "scorers"}
    assert {key: row["reason"] for key, row in rejects.items()} == expected
    assert {row["key"] for row in table(output, "index")} == set(scores) - set(expected)
    for key, row in rejects.items():
        if scores[key]["score_nsfw"] > nsfw_max:  # never a picture of an nsfw reject, whatever its first reason
            assert row["thumbnail"] is None, key
        else:
            assert Image.open(io.BytesIO(row["thumbnail"])).format == "JPEG", key
    funnel = json.loads((output / "manifest.json").read_text())["funnel"]["scorers"]
    assert funnel == {reason: list(expected.values()).count(reason) for reason in set(expected.values())}
