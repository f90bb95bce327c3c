"""``curate export pixart`` on a dataset the real pipeline built (the synthetic cases are in test_export*.py)."""

import json
import shutil

import numpy as np
from PIL import Image

from curation.cli import main
from curation.io.layout import iter_tar_samples, load_npy


def stored_samples(dataset) -> dict[str, dict]:
    """Every sample's json, dense and short T5 features, read straight from the shards."""
    samples = {}
    for shard in sorted((dataset / "shards").glob("*.tar")):
        with open(shard, "rb") as file:
            for key, files in iter_tar_samples(file, ("json", "t5.npy", "t5.short.npy")):
                meta = json.loads(files["json"])
                short = load_npy(files["t5.short.npy"]) if "t5.short.npy" in files else None
                samples[key] = {"meta": meta, "dense": load_npy(files["t5.npy"]), "short": short}
    return samples


def check_npz(path, features: np.ndarray, length: int) -> None:
    npz = np.load(path)
    tokens = features.shape[0]
    assert npz["caption_feature"].shape[:2] == (1, length) and npz["attention_mask"].dtype == np.int16
    assert npz["attention_mask"][0].tolist() == [1] * tokens + [0] * (length - tokens)
    np.testing.assert_array_equal(npz["caption_feature"][0, :tokens], features)


def test_one_command_sigma_export_of_the_demo_dataset(demo_dataset, tmp_path):
    dataset = tmp_path / "demo"
    shutil.copytree(demo_dataset, dataset)  # the export caches embeddings in the dataset: keep the shared one intact
    dest = tmp_path / "pixart"
    assert main(["export", "pixart", str(dataset), str(dest), "--flavor", "sigma"]) == 0
    manifest = json.loads((dataset / "manifest.json").read_text())
    length, res = manifest["config"]["t5"]["max_length"], manifest["config"]["vae"]["aspect_ratios"]
    entries = json.loads((dest / "InternData" / "data_info.json").read_text())
    stored = stored_samples(dataset)
    assert len(entries) == manifest["counts"]["written"] == len(stored)
    assert sum(sample["short"] is not None for sample in stored.values()) > 0, "the demo writes short captions"
    for entry in entries:
        stem = entry["path"][: -len(".png")]
        sample = stored[stem]
        captions = sample["meta"]["captions"]
        assert entry["sharegpt4v"] == captions["dense"]
        assert entry["prompt"] == captions.get("short", captions["dense"])
        prompt_features = sample["short"] if sample["short"] is not None else sample["dense"]
        check_npz(dest / "InternData" / "caption_features_new" / f"{stem}.npz", prompt_features, length)
        check_npz(dest / "InternData" / "sharegpt4v_caption_features_new" / f"{stem}.npz", sample["dense"], length)
        with Image.open(dest / "InternImgs" / entry["path"]) as image:
            assert image.size == (entry["width"], entry["height"])
        latent = np.load(dest / "InternData" / f"img_sdxl_vae_features_{res}resolution_ms_new" / f"{stem}.npy")
        assert latent.shape[0] == 8 and latent.dtype == np.float16
    summary = json.loads((dest / "export_summary.json").read_text())
    assert summary["counts"]["t5_encoded_at_export"] == 0 and summary["pixart_config"]["real_prompt_ratio"] == 0.5
    assert summary["embeddings"]["source"] == "computed"
    assert (dest / "output/pretrained_models" / f"null_embed_diffusers_{length}token.pth").is_file()
    assert len(list((dest / "output/tmp").glob(f"*_{length}token.pth"))) == 5
