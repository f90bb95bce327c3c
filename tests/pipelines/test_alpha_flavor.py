"""The α recipe end to end: cleaned captions, 120 tokens, α's SD-VAE scale, exported to α's loader layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curation.cli import main
from curation.config import T5Config
from curation.pixart.sample import read_prompt_features
from curation.stages.t5 import T5Stage
from curation.text import prepare_t5_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def alpha_dataset(demo_build_args, tiny_models, ray_session, tmp_path_factory) -> Path:
    args = list(demo_build_args)
    out = tmp_path_factory.mktemp("alpha") / "out"
    args[args.index("--output") + 1] = str(out)
    args[args.index("--input") + 1] = str(ROOT / "examples/images/nested")
    alpha = tiny_models / "pixart_alpha"
    args += [
        "--set",
        "flavor=alpha",
        "--set",
        "t5.max_length=120",
        "--set",
        "t5.caption_cleaning=alpha",
        "--set",
        f"t5.model.path={alpha}",
        "--set",
        f"vae.model.path={alpha}",
        "--set",
        "vae.scale_factor=0.18215",
    ]
    assert main(args) == 0
    return out


def test_alpha_features_are_t5_of_the_cleaned_caption(alpha_dataset):
    manifest = json.loads((alpha_dataset / "manifest.json").read_text())
    assert manifest["caption_cleaning"] == "alpha" and manifest["config"]["t5"]["max_length"] == 120
    texts, features = read_prompt_features(sorted((alpha_dataset / "shards").glob("*.tar")), 100, set())
    assert texts
    stage = T5Stage(T5Config.model_validate(manifest["config"]["t5"]))
    expected = stage.encode([prepare_t5_text(text, "alpha") for text in texts])
    for stored, (want, tokens, _) in zip(features, expected, strict=True):
        assert stored.shape[0] == tokens <= 120
        np.testing.assert_allclose(stored.astype(np.float32), want.astype(np.float32), atol=1e-3)


def test_alpha_export_feeds_internal_data_ms(alpha_dataset, tmp_path):
    dest = tmp_path / "pixart"
    assert main(["export", "pixart", str(alpha_dataset), str(dest), "--flavor", "alpha"]) == 0
    data = dest / "InternData"
    entries = json.loads((data / "partition_filter" / "data_info.json").read_text())
    assert entries and "sharegpt4v" not in entries[0]
    for entry in entries:
        stem = entry["path"][: -len(".png")]
        npz = np.load(data / "caption_feature_wmask" / f"{stem}.npz")
        assert npz["caption_feature"].shape[:2] == (1, 120) and npz["caption_feature"].dtype == np.float32
        assert npz["attention_mask"].dtype == np.int64
        latent = np.load(data / "img_vae_fatures_256_multiscale" / "ms" / f"{stem}.npy")
        assert latent.shape[0] == 8
    assert main(["export", "pixart", str(alpha_dataset), str(tmp_path / "wrong"), "--flavor", "sigma"]) == 2
