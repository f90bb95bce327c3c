"""Σ export of datasets with per-caption T5 features: ``sharegpt4v`` = dense, ``prompt`` = short, read back
the way PixArt-Σ's own dataset classes read them, with no T5 loaded."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.cli import main
from curation.pixart.embed_files import write_null_embed, write_prompt_embed
from curation.pixart.export import export_pixart
from tests.pixart.pixart_sigma_reader import SigmaFeatureReader

RES, FEATURE_DIM, TOKENS = 256, 16, 300  # conftest.BASE_SIZE, conftest.FEATURE_DIM, Σ's model_max_length
PROMPT_DIR, SHAREGPT4V_DIR = "caption_features_new", "sharegpt4v_caption_features_new"


def entries_by_key(dest: Path) -> dict[str, dict]:
    entries = json.loads((dest / "InternData" / "data_info.json").read_text())
    return {Path(entry["path"]).stem: entry for entry in entries}


def expected_prompt(sample, name: str = "short") -> tuple[str, np.ndarray]:
    """What PixArt's ``prompt`` branch must read: the named caption, or the dense one when it is missing."""
    if name in sample.captions:
        return sample.captions[name], sample.t5_extra[name]
    return sample.captions["dense"], sample.t5


def check_npz(path: Path, features: np.ndarray) -> None:
    """PixArt-Σ's extractor format: (1, T, D) float16 and an int16 (1, T) mask of the real tokens."""
    npz = np.load(path)
    feature, mask = npz["caption_feature"], npz["attention_mask"]
    assert feature.shape == (1, TOKENS, FEATURE_DIM) and feature.dtype == np.float16
    assert mask.shape == (1, TOKENS) and mask.dtype == np.int16
    tokens = features.shape[0]
    assert mask[0].tolist() == [1] * tokens + [0] * (TOKENS - tokens)
    np.testing.assert_array_equal(feature[0, :tokens], features)
    np.testing.assert_array_equal(feature[0, tokens:], np.broadcast_to(features[-1], (TOKENS - tokens, FEATURE_DIM)))


def test_sharegpt4v_is_dense_and_prompt_is_short_with_stored_features(make_dataset, tmp_path):
    dataset, stored = make_dataset(caption_format="dense_short", short_missing_every=4)
    missing = {key for key, sample in stored.items() if "short" not in sample.captions}
    assert 0 < len(missing) < len(stored)
    dest = tmp_path / "out"
    summary = export_pixart(str(dataset), dest, "sigma")  # no encoder given: nothing can be encoded
    entries = entries_by_key(dest)
    assert set(entries) == set(stored)
    for key, entry in entries.items():
        prompt_text, prompt_features = expected_prompt(stored[key])
        assert entry["prompt"] == prompt_text and entry["sharegpt4v"] == stored[key].captions["dense"]
        check_npz(dest / "InternData" / PROMPT_DIR / f"{key}.npz", prompt_features)
        check_npz(dest / "InternData" / SHAREGPT4V_DIR / f"{key}.npz", stored[key].t5)
    for key in missing:  # the fallback writes the dense npz once and links it
        assert os.path.samefile(
            dest / "InternData" / PROMPT_DIR / f"{key}.npz", dest / f"InternData/{SHAREGPT4V_DIR}/{key}.npz"
        )
    counts = summary["counts"]
    assert counts["exported"] == len(stored) == counts["sharegpt4v_caption"] == counts["sharegpt4v_features"]
    assert (counts["prompt_caption"], counts["prompt_fallback_dense"]) == (len(stored) - len(missing), len(missing))
    assert counts["legacy_format"] == counts["t5_encoded_at_export"] == 0
    assert summary["captions"] == {"prompt": "short", "sharegpt4v": "dense", "prompt_fallback": "dense"}
    assert summary["pixart_config"]["real_prompt_ratio"] == 0.5 and summary["t5_loaded"] is False
    assert any(f"{len(missing)} samples have no 'short' caption" in note for note in summary["notes"])


@pytest.mark.parametrize("single_scale", [False, True])
def test_pixart_sigma_loader_reads_both_branches_at_ratio_one_half(make_dataset, tmp_path, single_scale):
    dataset, stored = make_dataset(caption_format="dense_short", short_missing_every=5, shards=2)
    dest = tmp_path / "out"
    summary = export_pixart(str(dataset), dest, "sigma", single_scale=single_scale)
    config = summary["pixart_config"]
    reader = SigmaFeatureReader(
        str(dest / "InternData"),
        config["data"]["image_list_json"],
        config["image_size"],
        config["real_prompt_ratio"],
        config["model_max_length"],
        multi_scale=not single_scale,
    )
    assert len(reader) == summary["counts"]["exported"] > 0
    random.seed(0)
    branches = []
    for _ in range(4):
        for index in range(len(reader)):
            latent, y, mask, data_info = reader.getdata(index)
            opened = Path(reader.opened[-1])
            key, folder = opened.stem, opened.parent.name
            branches.append(folder)
            features = expected_prompt(stored[key])[1] if folder == PROMPT_DIR else stored[key].t5
            tokens = features.shape[0]
            assert y.shape == (1, TOKENS, FEATURE_DIM) and mask.shape == (1, 1, TOKENS) and mask.dtype == torch.int16
            assert mask.sum() == tokens
            np.testing.assert_array_equal(y[0, :tokens].numpy(), features)
            assert latent.shape == (4, *stored[key].vae.shape[1:])
            assert data_info["img_hw"].tolist() == [stored[key].height, stored[key].width]
    assert set(branches) == {PROMPT_DIR, SHAREGPT4V_DIR}


@pytest.mark.parametrize("stored_alt", [False, True])
def test_prompt_caption_alt(make_dataset, tmp_path, stored_alt):
    dataset, stored = make_dataset(caption_format="dense_short", second_every=2, alt_features=stored_alt)
    calls = []

    def encode_alt(texts: list[str]) -> list[np.ndarray]:
        calls.extend(texts)
        return [np.full((len(text.split()) + 1, FEATURE_DIM), 0.25, dtype=np.float16) for text in texts]

    dest = tmp_path / "out"
    summary = export_pixart(str(dataset), dest, "sigma", extra_features={"alt": encode_alt}, prompt_caption="alt")
    with_alt = {key for key, sample in stored.items() if "alt" in sample.captions}
    for key, entry in entries_by_key(dest).items():
        if key in with_alt:
            text = stored[key].captions["alt"]
            encoded = np.full((len(text.split()) + 1, FEATURE_DIM), 0.25, dtype=np.float16)
            features = stored[key].t5_extra["alt"] if stored_alt else encoded
        else:
            text, features = stored[key].captions["dense"], stored[key].t5
        assert entry["prompt"] == text and entry["sharegpt4v"] == stored[key].captions["dense"]
        check_npz(dest / "InternData" / PROMPT_DIR / f"{key}.npz", features)
    assert sorted(calls) == ([] if stored_alt else sorted(stored[key].captions["alt"] for key in with_alt))
    assert summary["counts"]["t5_encoded_at_export"] == len(calls)
    assert summary["counts"]["prompt_fallback_dense"] == len(stored) - len(with_alt)


def test_prompt_caption_without_features_or_encoder_is_refused(make_dataset, tmp_path):
    dataset, _ = make_dataset(caption_format="dense_short", second_every=1)
    with pytest.raises(ValueError, match="'alt' has no stored T5 features"):
        export_pixart(str(dataset), tmp_path / "out", "sigma", prompt_caption="alt")


def test_alpha_keeps_the_dense_caption(make_dataset, tmp_path):
    dataset, stored = make_dataset(flavor="alpha", caption_format="dense")
    dest = tmp_path / "out"
    summary = export_pixart(str(dataset), dest, "alpha")
    for key, entry in entries_by_key(dest).items():
        assert entry["prompt"] == stored[key].captions["dense"] and "sharegpt4v" not in entry
        npz = np.load(dest / "InternData" / "caption_feature_wmask" / f"{key}.npz")
        np.testing.assert_array_equal(npz["caption_feature"][0, : stored[key].t5.shape[0]], stored[key].t5)
    assert summary["captions"] == {"prompt": "dense"}
    assert summary["counts"]["sharegpt4v_features"] == 0


def _cache_embeddings(dataset: Path) -> None:
    rng = np.random.default_rng(1)
    write_null_embed(dataset / "embeddings/null_embed_diffusers_300token.pth", rng.standard_normal((1, 8)), TOKENS)
    write_prompt_embed(dataset / "embeddings/tmp/dog_300token.pth", rng.standard_normal((2, 8)), TOKENS)


def _point_t5_at(dataset: Path, path: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["config"]["t5"]["model"] = {"path": str(path)}
    (dataset / "manifest.json").write_text(json.dumps(manifest))


def test_cli_export_loads_no_t5_when_features_and_embeddings_are_stored(make_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a load attempt fails at once instead of reaching for the hub
    dataset, stored = make_dataset(caption_format="dense_short", short_missing_every=3)
    missing_t5 = tmp_path / "no-such-t5"
    _point_t5_at(dataset, missing_t5)
    args = ["export", "pixart", str(dataset)]

    assert main([*args, str(tmp_path / "without-cache"), "--flavor", "sigma"]) == 2  # embeddings need the T5
    error = capsys.readouterr().err
    assert str(missing_t5) in error and "--t5-model" in error and len(error.strip().splitlines()) == 1

    assert main([*args, str(tmp_path / "skipped"), "--flavor", "sigma", "--skip-embeddings"]) == 0
    skipped = json.loads((tmp_path / "skipped/export_summary.json").read_text())
    assert skipped["embeddings"]["source"] is None and any("embed-prompts" in n for n in skipped["notes"])

    _cache_embeddings(dataset)
    assert main([*args, str(tmp_path / "out"), "--flavor", "sigma"]) == 0
    summary = json.loads((tmp_path / "out/export_summary.json").read_text())
    assert summary["t5_loaded"] is False and summary["counts"]["t5_encoded_at_export"] == 0
    assert summary["counts"]["exported"] == len(stored) and summary["pixart_config"]["real_prompt_ratio"] == 0.5
    assert summary["embeddings"]["source"] == "dataset"
    assert (tmp_path / "out/output/pretrained_models/null_embed_diffusers_300token.pth").is_file()
    assert (tmp_path / "out/output/tmp/dog_300token.pth").is_file()


def test_re_export_into_the_same_folder_does_not_write_through_links(make_dataset, tmp_path):
    dataset, stored = make_dataset(caption_format="dense_short", short_missing_every=2)
    dest = tmp_path / "out"
    export_pixart(str(dataset), dest, "sigma", prompt_caption="no-such-caption")  # all fallbacks: linked files
    export_pixart(str(dataset), dest, "sigma")
    for key, sample in stored.items():
        check_npz(dest / "InternData" / PROMPT_DIR / f"{key}.npz", expected_prompt(sample)[1])
        check_npz(dest / "InternData" / SHAREGPT4V_DIR / f"{key}.npz", sample.t5)
