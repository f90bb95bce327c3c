"""``curate export pixart`` on a dataset the real pipeline built (the synthetic cases are in test_export.py)."""

import json

import numpy as np
from PIL import Image

from curation.cli import main
from curation.config import T5Config
from curation.stages.t5 import T5Stage


def test_sigma_export_of_the_demo_dataset(demo_dataset, tmp_path):
    dest = tmp_path / "pixart"
    assert main(["export", "pixart", str(demo_dataset), str(dest), "--flavor", "sigma"]) == 0
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    length, res = manifest["config"]["t5"]["max_length"], manifest["config"]["vae"]["aspect_ratios"]
    entries = json.loads((dest / "InternData" / "data_info.json").read_text())
    assert len(entries) == manifest["counts"]["written"]
    with_second = [e for e in entries if e["sharegpt4v"]]
    assert with_second, "the demo has sidecar captions, exported as Σ's second caption"
    stage = T5Stage(T5Config.model_validate(manifest["config"]["t5"]))
    for entry in entries:
        stem = entry["path"][: -len(".png")]
        with Image.open(dest / "InternImgs" / entry["path"]) as image:
            assert image.size == (entry["width"], entry["height"])
        npz = np.load(dest / "InternData" / "caption_features_new" / f"{stem}.npz")
        assert npz["caption_feature"].shape[:2] == (1, length) and npz["attention_mask"].dtype == np.int16
        latent = np.load(dest / "InternData" / f"img_sdxl_vae_features_{res}resolution_ms_new" / f"{stem}.npy")
        assert latent.shape[0] == 8 and latent.dtype == np.float16
    for entry in with_second:
        stem = entry["path"][: -len(".png")]
        second = np.load(dest / "InternData" / "sharegpt4v_caption_features_new" / f"{stem}.npz")
        expected, tokens, _ = stage.encode([entry["sharegpt4v"]])[0]
        assert second["attention_mask"].sum() == tokens
        np.testing.assert_allclose(second["caption_feature"][0, :tokens].astype(np.float32), expected, atol=1e-2)
