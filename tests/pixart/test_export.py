from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.buckets import aspect_ratio_table
from curation.pixart.embed_files import write_null_embed, write_prompt_embed
from curation.pixart.export import export_pixart

RES = 256  # the synthetic dataset's bucket table (conftest.BASE_SIZE)
FEATURE_DIM = 16  # conftest.FEATURE_DIM


# Where each PixArt dataset class looks (reference §3b), written out independently of the exporter.
def dir_stem(path: str) -> str:
    return "_".join(path.rsplit("/", 1))


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


LOADERS = {
    ("alpha", False): [  # A InternalDataMS, S InternalDataMS
        ("partition_filter", "caption_feature_wmask", f"img_vae_fatures_{RES}_multiscale/ms", dir_stem),
        ("", "caption_features", f"img_vae_fatures_{RES}_multiscale/ms", dir_stem),
    ],
    ("alpha", True): [  # InternalData in both repos
        ("partition", "caption_feature_wmask", f"img_vae_features_{RES}resolution/noflip", dir_stem),
    ],
    ("sigma", False): [  # InternalDataMSSigma
        ("", "caption_features_new", f"img_sdxl_vae_features_{RES}resolution_ms_new", dir_stem),
    ],
    ("sigma", True): [  # InternalDataSigma
        ("", "caption_features_new", f"img_sdxl_vae_features_{RES}resolution_new", basename),
    ],
}
DTYPES = {"alpha": (np.float32, np.int64), "sigma": (np.float16, np.int16)}
TOKENS = {"alpha": 120, "sigma": 300}


def closest_bucket(height: int, width: int) -> tuple[int, int]:
    table = aspect_ratio_table(RES)
    return table[min(table, key=lambda ratio: abs(float(ratio) - height / width))]


def feature_name(path: str, rule, ext: str) -> str:
    return rule(path).replace(".png", ext)


def check_entry(root: Path, entry: dict, stored, caption_dir: str, vae_dir: str, rule, flavor: str) -> None:
    data = root / "InternData"
    with Image.open(root / "InternImgs" / entry["path"]) as image:
        assert image.format == "PNG"
        assert image.size == (entry["width"], entry["height"])
    assert entry["ratio"] == pytest.approx(entry["height"] / entry["width"])
    npz = np.load(data / caption_dir / feature_name(entry["path"], rule, ".npz"))
    feature, mask = npz["caption_feature"], npz["attention_mask"]
    assert feature.shape == (1, TOKENS[flavor], FEATURE_DIM) and mask.shape == (1, TOKENS[flavor])
    assert (feature.dtype, mask.dtype) == tuple(np.dtype(t) for t in DTYPES[flavor])
    tokens = stored.t5.shape[0]
    assert mask.sum() == tokens and mask[0, :tokens].all()
    np.testing.assert_array_equal(feature[0, :tokens], stored.t5.astype(feature.dtype))
    bucket_h, bucket_w = closest_bucket(entry["height"], entry["width"])
    vae = np.load(data / vae_dir / feature_name(entry["path"], rule, ".npy"), allow_pickle=False)
    assert vae.shape == (8, bucket_h // 8, bucket_w // 8)
    np.testing.assert_array_equal(vae, stored.vae.astype(vae.dtype))


@pytest.mark.parametrize("flavor", ["alpha", "sigma"])
@pytest.mark.parametrize("single_scale", [False, True])
def test_every_file_each_loader_opens_exists(make_dataset, tmp_path, flavor, single_scale):
    dataset, stored = make_dataset(flavor=flavor)
    dest = tmp_path / "export"
    summary = export_pixart(str(dataset), dest, flavor, single_scale=single_scale)
    for json_dir, caption_dir, vae_dir, rule in LOADERS[(flavor, single_scale)]:
        entries = json.loads((dest / "InternData" / json_dir / "data_info.json").read_text())
        expected = {k for k, s in stored.items() if not single_scale or s.bucket == "1.0"}
        assert {Path(entry["path"]).stem for entry in entries} == expected
        for entry in entries:
            assert "/" not in entry["path"] and entry["path"].count(".") == 1 and entry["path"].endswith(".png")
            check_entry(dest, entry, stored[Path(entry["path"]).stem], caption_dir, vae_dir, rule, flavor)
    assert summary["counts"]["exported"] == len(expected)
    assert summary["counts"]["skipped_not_square"] == len(stored) - len(expected)
    assert summary["counts"]["skipped_inconsistent"] == 0


def test_alpha_and_sigma_differ_in_dtypes_and_folders(make_dataset, tmp_path):
    alpha_root, _ = make_dataset("alpha", flavor="alpha")
    sigma_root, _ = make_dataset("sigma", flavor="sigma")
    export_pixart(str(alpha_root), tmp_path / "a", "alpha")
    export_pixart(str(sigma_root), tmp_path / "s", "sigma")
    alpha = np.load(next((tmp_path / "a/InternData/caption_feature_wmask").glob("*.npz")))
    sigma = np.load(next((tmp_path / "s/InternData/caption_features_new").glob("*.npz")))
    assert alpha["caption_feature"].dtype == np.float32 and alpha["attention_mask"].dtype == np.int64
    assert sigma["caption_feature"].dtype == np.float16 and sigma["attention_mask"].dtype == np.int16
    assert alpha["caption_feature"].shape[1] == 120 and sigma["caption_feature"].shape[1] == 300
    single = tmp_path / "a1"
    export_pixart(str(alpha_root), single, "alpha", single_scale=True)
    latent = next((single / f"InternData/img_vae_features_{RES}resolution/noflip").glob("*.npy"))
    assert np.load(latent).dtype == np.float32


def test_json_order_is_shuffled_and_seed_stable(make_dataset, tmp_path):
    dataset, _ = make_dataset(shards=3, per_shard=8)

    def order(name: str, seed: int) -> list[str]:
        export_pixart(str(dataset), tmp_path / name, "sigma", seed=seed)
        return [entry["path"] for entry in json.loads((tmp_path / name / "InternData/data_info.json").read_text())]

    first, again, other = order("one", 0), order("two", 0), order("three", 1)
    assert first == again
    assert first != other and sorted(first) == sorted(other)
    entries = json.loads((tmp_path / "one/InternData/data_info.json").read_text())
    ratios = [entry["ratio"] for entry in entries]
    assert ratios != sorted(ratios) and ratios != sorted(ratios, reverse=True)
    assert first != sorted(first)


def test_legacy_sigma_second_caption_from_extra_features(make_dataset, tmp_path):
    """Datasets built before per-caption T5 features: prompt = dense, sharegpt4v = alt text encoded at export."""
    dataset, stored = make_dataset(second_every=1)
    calls = []

    def encode_alt(texts: list[str]) -> list[np.ndarray]:
        calls.append(len(texts))
        return [np.full((len(text.split()), FEATURE_DIM), 0.5, dtype=np.float16) for text in texts]

    summary = export_pixart(str(dataset), tmp_path / "out", "sigma", extra_features={"alt": encode_alt})
    entries = json.loads((tmp_path / "out/InternData/data_info.json").read_text())
    for entry in entries:
        key = Path(entry["path"]).stem
        assert entry["sharegpt4v"] == stored[key].captions["alt"]
        assert entry["prompt"] == stored[key].captions["dense"]
        npz = np.load(tmp_path / "out/InternData/sharegpt4v_caption_features_new" / f"{key}.npz")
        assert npz["caption_feature"].shape == (1, 300, FEATURE_DIM)
        assert npz["attention_mask"].sum() == len(entry["sharegpt4v"].split())
    assert sum(calls) == len(stored)
    counts = summary["counts"]
    assert counts["sharegpt4v_features"] == counts["legacy_format"] == counts["t5_encoded_at_export"] == len(stored)
    assert summary["pixart_config"]["real_prompt_ratio"] == 0.5 and summary["t5_loaded"] is True


def test_legacy_sigma_without_second_features_asks_for_real_prompt_ratio_one(make_dataset, tmp_path):
    dataset, stored = make_dataset(second_every=2)
    summary = export_pixart(str(dataset), tmp_path / "out", "sigma")
    entries = json.loads((tmp_path / "out/InternData/data_info.json").read_text())
    by_key = {Path(entry["path"]).stem: entry for entry in entries}
    assert all(by_key[k]["sharegpt4v"] == s.captions.get("alt", "") for k, s in stored.items())
    assert not list((tmp_path / "out/InternData/sharegpt4v_caption_features_new").iterdir())
    assert summary["pixart_config"]["real_prompt_ratio"] == 1.0
    assert any("real_prompt_ratio=1.0" in note for note in summary["notes"])


def test_summary_lists_pixart_config_keys(make_dataset, tmp_path):
    dataset, _ = make_dataset(flavor="alpha")
    summary = export_pixart(str(dataset), tmp_path / "out", "alpha")
    config = summary["pixart_config"]
    assert config["data_root"] == str((tmp_path / "out").absolute())
    assert config["data"] == {
        "type": "InternalDataMS",
        "root": "InternData",
        "image_list_json": ["data_info.json"],
        "load_vae_feat": True,
        "load_t5_feat": True,
    }
    assert config["aspect_ratio_type"] == f"ASPECT_RATIO_{RES}" and config["scale_factor"] == 0.18215
    assert json.loads((tmp_path / "out/export_summary.json").read_text()) == summary


def test_embeddings_are_copied_where_pixart_reads_them(make_dataset, tmp_path):
    dataset, _ = make_dataset()
    rng = np.random.default_rng(0)
    write_null_embed(dataset / "embeddings/null_embed_diffusers_300token.pth", rng.standard_normal((1, 8)), 300)
    write_prompt_embed(dataset / "embeddings/tmp/dog_300token.pth", rng.standard_normal((2, 8)), 300)
    summary = export_pixart(str(dataset), tmp_path / "out", "sigma")
    null = torch.load(tmp_path / "out/output/pretrained_models/null_embed_diffusers_300token.pth")
    assert null["uncond_prompt_embeds"].shape == (1, 300, 8)
    for mask_key in ("uncond_prompt_embeds_mask", "uncond_prompt_attention_mask"):
        assert null[mask_key].shape == (1, 300) and null[mask_key].sum() == 1
    prompt = torch.load(tmp_path / "out/output/tmp/dog_300token.pth")
    assert prompt["caption_embeds"].shape == (1, 300, 8) and prompt["emb_mask"].sum() == 2
    assert summary["embeddings"]["null_embed"].endswith("output/pretrained_models/null_embed_diffusers_300token.pth")


def test_null_embed_with_full_encoder_output_keeps_rows(tmp_path):
    full = np.arange(120 * 4, dtype=np.float32).reshape(120, 4)
    write_null_embed(tmp_path / "null.pth", full, 120, real_tokens=1)
    saved = torch.load(tmp_path / "null.pth")
    np.testing.assert_array_equal(saved["uncond_prompt_embeds"][0].numpy(), full)
    assert saved["uncond_prompt_attention_mask"].tolist() == [[1] + [0] * 119]


def test_missing_embeddings_are_reported(make_dataset, tmp_path):
    dataset, _ = make_dataset()
    summary = export_pixart(str(dataset), tmp_path / "out", "sigma")
    assert summary["embeddings"] == {
        "null_embed": None,
        "validation_prompts": [],
        "source": None,
        "not_cached": None,
    }
    assert any("curate embed-prompts" in note for note in summary["notes"])


@pytest.mark.parametrize(
    ("flavor", "options", "message"),
    [("alpha", {}, "max_length"), ("sigma", {"resolution": 512}, "bucket table"), ("gamma", {}, "flavor")],
)
def test_refuses_mismatched_exports(make_dataset, tmp_path, flavor, options, message):
    dataset, _ = make_dataset(flavor="sigma")
    with pytest.raises(ValueError, match=message):
        export_pixart(str(dataset), tmp_path / "out", flavor, **options)


def test_refuses_destination_containing_interndata(make_dataset, tmp_path):
    dataset, _ = make_dataset()
    with pytest.raises(ValueError, match="InternData"):
        export_pixart(str(dataset), tmp_path / "InternData_exports", "sigma")


def test_reads_dataset_from_fsspec_url(make_dataset, tmp_path):
    dataset, stored = make_dataset(shards=2, per_shard=2)
    summary = export_pixart(f"file://{dataset}", tmp_path / "out", "sigma")
    assert summary["counts"]["exported"] == len(stored)
