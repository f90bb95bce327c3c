"""Scorer stage: scores equal transformers run directly, thresholds reject with reasons, batching changes nothing.

The reference scores are computed here without the code under test: CLIP's own processor on PIL images,
``get_image_features`` / ``get_text_features``, the published ``normalized`` in numpy, the aesthetic MLP as
plain matrix products over the state dict's published keys, and a softmax over the classifiers' logits.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from curation.config import ScorersConfig
from curation.models.scorers import keeps_geometry
from curation.models.tiny_scorers import write_tiny_scorers
from curation.records import FAILED, OK, REJECTED, new_row, put_pixels
from curation.stages.prepare import scorer_view
from curation.stages.scorers import ScorerStage

ALTS = ["a photo of a cat", None, "   ", "red car on a street", None, "a small dog on the beach"]
ATOL = 1e-5  # float32 CPU; the batched and the per-image matrix products round differently


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_scorers(tmp_path_factory.mktemp("scorers"))


def cpu_ref(path: Path) -> dict:
    return {"path": str(path), "device": "cpu", "dtype": "float32"}


def config_data(tiny: dict[str, Path], batch_size: int = 4) -> dict:
    return {
        "clip": cpu_ref(tiny["clip"]),
        "aesthetic": {"model": cpu_ref(tiny["aesthetic"])},
        "nsfw": {"model": cpu_ref(tiny["nsfw"])},
        "watermark": {"model": cpu_ref(tiny["watermark"])},
        "clip_similarity": {"enabled": True},
        "resources": {"batch_size": batch_size},
    }


def stage_for(data: dict) -> ScorerStage:
    stage = ScorerStage(ScorersConfig.model_validate(data))
    stage.setup()
    return stage


def views(side: int = 224) -> list[np.ndarray]:
    """Scorer views (the filter's CLIP-geometry crop) of smooth colour gradients with noise, one per alt."""
    out = []
    for seed, (height, width) in enumerate([(300, 400), (256, 256), (512, 300), (320, 240), (600, 800), (280, 500)]):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
        pixels = np.clip(base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        out.append(scorer_view(Image.fromarray(pixels), side))
    return out


def rows_for(images: list[np.ndarray]) -> list[dict]:
    rows = []
    for index, (pixels, alt) in enumerate(zip(images, ALTS, strict=True)):
        row = new_row(f"key{index}", f"test/{index}", b"image bytes", alt=alt)
        put_pixels(row, "scorer", pixels)
        rows.append(row)
    return rows


def scores_of(rows: list[dict]) -> list[dict]:
    return [json.loads(row["scores"]) for row in rows]


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def normalized(a: np.ndarray) -> np.ndarray:  # improved-aesthetic-predictor's simple_inference.py
    l2 = np.atleast_1d(np.linalg.norm(a, 2, -1))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, -1)


@torch.no_grad()
def reference_scores(tiny: dict[str, Path], images: list[np.ndarray]) -> dict[str, list[float | None]]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification, CLIPModel, CLIPProcessor

    pil = [Image.fromarray(pixels) for pixels in images]
    processor, clip = CLIPProcessor.from_pretrained(tiny["clip"]), CLIPModel.from_pretrained(tiny["clip"])
    embeddings = normalized(_pooled(clip.get_image_features(**processor(images=pil, return_tensors="pt"))).numpy())
    state = torch.load(tiny["aesthetic"], map_location="cpu", weights_only=True)
    hidden = torch.from_numpy(embeddings)
    for layer in (0, 2, 4, 6, 7):  # Dropout is the identity in eval mode; the published MLP has no activations
        hidden = hidden @ state[f"layers.{layer}.weight"].T + state[f"layers.{layer}.bias"]
    scores: dict[str, list[float | None]] = {"aesthetic": hidden[:, 0].tolist()}
    for name in ("nsfw", "watermark"):
        model = AutoModelForImageClassification.from_pretrained(tiny[name])
        logits = model(**AutoImageProcessor.from_pretrained(tiny[name])(images=pil, return_tensors="pt")).logits
        scores[name] = logits.softmax(-1)[:, model.config.label2id[name]].tolist()
    similarity: list[float | None] = []
    for embedding, alt in zip(embeddings, ALTS, strict=True):
        if not (alt and alt.strip()):
            similarity.append(None)
            continue
        text = _pooled(clip.get_text_features(**processor(text=[alt.strip()], return_tensors="pt"))).numpy()
        similarity.append(float(embedding @ normalized(text)[0]))
    scores["clip_similarity"] = similarity
    return scores


@pytest.fixture(scope="module")
def stage(tiny) -> ScorerStage:
    return stage_for(config_data(tiny))


@pytest.mark.parametrize("side", [224, 160], ids=["view-at-model-size", "view-resized-by-processor"])
def test_scores_equal_transformers_run_directly(tiny, stage, side):
    images = views(side)
    rows = rows_for(images)
    stage.process_batch(rows)
    expected = reference_scores(tiny, images)
    assert [row["status"] for row in rows] == [OK] * len(rows)
    for index, stored in enumerate(scores_of(rows)):
        names = [name for name in expected if expected[name][index] is not None]
        assert list(stored) == names  # no clip_similarity without alt text (None or blank)
        for name in names:
            assert stored[name] == pytest.approx(expected[name][index], abs=ATOL), (index, name)
    assert all(row["scorer_pixels"] is None and row["scorer_shape"] is None for row in rows)


def test_the_uint8_fast_path_is_taken_only_where_the_processor_would_not_resize(stage):
    clip, nsfw = stage.scorers[0].clip.processor.image_processor, stage.scorers[1].processor
    assert keeps_geometry(clip, 224, 224) and keeps_geometry(nsfw, 224, 224)
    assert not keeps_geometry(clip, 160, 160) and not keeps_geometry(nsfw, 224, 200)
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    assert not keeps_geometry(ConvNextImageProcessorPil(size={"shortest_edge": 224}), 224, 224)  # crop_pct resize


def test_batched_scores_equal_one_image_at_a_time(tiny, stage):
    batched, single = rows_for(views()), rows_for(views())
    stage.process_batch(batched)
    stage_for(config_data(tiny, batch_size=1)).process_batch(single)
    for many, one in zip(scores_of(batched), scores_of(single), strict=True):
        assert many.keys() == one.keys()
        assert all(many[name] == pytest.approx(one[name], abs=ATOL) for name in many)


def midpoint_below_lowest_but_one(values: list[float]) -> float:
    low, second = sorted(values)[:2]
    return (low + second) / 2


def test_thresholds_reject_with_the_first_failed_rule_as_reason_and_every_failure_in_detail(tiny):
    expected = reference_scores(tiny, views())
    aesthetic_min = midpoint_below_lowest_but_one(expected["aesthetic"])
    nsfw_max = -midpoint_below_lowest_but_one([-value for value in expected["nsfw"]])
    data = config_data(tiny)
    data["aesthetic"]["min"], data["nsfw"]["max"] = aesthetic_min, nsfw_max
    data["clip_similarity"]["min"] = 0.9999  # every row with alt text fails it; rows without alt have no score
    rows = rows_for(views())
    stage_for(data).process_batch(rows)

    lowest_aesthetic = int(np.argmin(expected["aesthetic"]))
    highest_nsfw = int(np.argmax(expected["nsfw"]))
    for index, row in enumerate(rows):
        scores = json.loads(row["scores"])
        failures = []
        if index == lowest_aesthetic:
            failures.append(("aesthetic", f"aesthetic {scores['aesthetic']:.4f} < min {aesthetic_min:g}"))
        if index == highest_nsfw:
            failures.append(("nsfw", f"nsfw {scores['nsfw']:.4f} > max {nsfw_max:g}"))
        if ALTS[index] and ALTS[index].strip():
            failures.append(("clip_similarity", f"clip_similarity {scores['clip_similarity']:.4f} < min 0.9999"))
        if not failures:
            assert (row["status"], row["reason"]) == (OK, None), index
            continue
        assert (row["status"], row["stage"], row["reason"]) == (REJECTED, "scorers", failures[0][0]), index
        assert row["detail"] == "; ".join(text for _, text in failures)
        # a thumbnail of the view the scorers saw, for the report; never one of an nsfw reject
        if any(reason == "nsfw" for reason, _ in failures):
            assert row["thumbnail"] is None, index
        else:
            thumbnail = Image.open(io.BytesIO(row["thumbnail"]))
            assert thumbnail.format == "JPEG" and max(thumbnail.size) == 128, index
    assert {row["status"] for row in rows} == {OK, REJECTED}


def test_a_row_without_its_view_fails_alone_and_rows_not_ok_pass_untouched(stage):
    rows = rows_for(views())
    rows[1]["scorer_pixels"] = rows[1]["scorer_shape"] = None
    rows[2].update(status=REJECTED, stage="filter", reason="blurry", detail="3.1")
    stage.process_batch(rows)
    assert (rows[1]["status"], rows[1]["stage"], rows[1]["reason"]) == (FAILED, "scorers", "error")
    assert "scorer pixels" in rows[1]["detail"]
    assert (rows[2]["status"], rows[2]["reason"], rows[2]["scores"]) == (REJECTED, "blurry", None)
    assert [row["status"] for row in rows[3:]] == [OK] * 3 and rows[0]["status"] == OK


def test_config_refusals_and_label_lookup(tiny):
    with pytest.raises(ValidationError, match=r"need scorers\.clip"):
        ScorersConfig(aesthetic={"model": cpu_ref(tiny["aesthetic"])})
    with pytest.raises(ValidationError, match=r"min 2\.0 is above max 1\.0"):
        ScorersConfig(nsfw={"model": cpu_ref(tiny["nsfw"]), "min": 2, "max": 1})
    assert ScorersConfig().enabled == []

    def nsfw_only(label) -> ScorerStage:
        return stage_for({"nsfw": {"model": cpu_ref(tiny["nsfw"]), "positive_label": label}})

    assert nsfw_only("NSFW").scorers[0].index == nsfw_only(1).scorers[0].index == 1
    assert nsfw_only(0).scorers[0].index == 0
    with pytest.raises(ValueError, match=r"'porn' does not name one class of this model .*'normal'"):
        nsfw_only("porn")
    with pytest.raises(ValueError, match="positive_label 2 is not a class index"):
        nsfw_only(2)


def test_an_aesthetic_head_of_another_width_than_the_clip_is_refused(tiny, tmp_path):
    torch.save({name: torch.zeros(1024, 8) if name == "layers.0.weight" else tensor for name, tensor in
                torch.load(tiny["aesthetic"], weights_only=True).items()}, tmp_path / "wide.pth")  # fmt: skip
    data = config_data(tiny)
    data["aesthetic"]["model"] = cpu_ref(tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="aesthetic MLP takes 8-d embeddings, the CLIP gives 16"):
        stage_for(data)
