"""One-command export: the null and validation-prompt embeddings are computed with the dataset's T5 when it
has none, cached in ``DATASET/embeddings/``, and reused by the next export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.cli import main
from curation.pixart.embed import PIXART_VALIDATION_PROMPTS

TOKENS = 300


@pytest.fixture(scope="module")
def pixart_t5(tiny_models):
    """PixArt-Σ's own way to encode (train.py): T5Tokenizer, padding to max_length, last_hidden_state."""
    from transformers import T5EncoderModel, T5Tokenizer

    folder = tiny_models / "pixart_sigma"
    tokenizer = T5Tokenizer.from_pretrained(folder, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder").eval()

    def encode(text: str) -> tuple[np.ndarray, np.ndarray]:
        tokens = tokenizer(text, max_length=TOKENS, padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden[0].numpy(), tokens.attention_mask[0].numpy()

    return folder, encode


def _point_t5_at(dataset: Path, path: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["config"]["t5"]["model"] = {"path": str(path)}
    (dataset / "manifest.json").write_text(json.dumps(manifest))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_one_command_export_computes_caches_and_reuses_embeddings(make_dataset, pixart_t5, tmp_path, monkeypatch):
    t5_folder, encode = pixart_t5
    dataset, _ = make_dataset(caption_format="dense_short", t5_model=str(t5_folder), shards=1, per_shard=4)
    dest = tmp_path / "first"
    assert main(["export", "pixart", str(dataset), str(dest), "--flavor", "sigma"]) == 0
    summary = json.loads((dest / "export_summary.json").read_text())
    assert summary["embeddings"]["source"] == "computed" and summary["t5_loaded"] is True
    assert summary["counts"]["t5_encoded_at_export"] == 0  # the captions' features came from the dataset

    null = torch.load(dest / "output/pretrained_models/null_embed_diffusers_300token.pth", weights_only=True)
    expected, mask = encode("")
    assert mask.tolist() == [1] + [0] * (TOKENS - 1)
    np.testing.assert_allclose(null["uncond_prompt_embeds"][0].float().numpy(), expected, atol=1e-5)
    for key in ("uncond_prompt_embeds_mask", "uncond_prompt_attention_mask"):
        assert null[key].tolist() == [mask.tolist()]
    for prompt in PIXART_VALIDATION_PROMPTS:
        saved = torch.load(dest / "output/tmp" / f"{prompt}_{TOKENS}token.pth", weights_only=True)
        expected, mask = encode(prompt)
        real = int(mask.sum())
        assert saved["caption_embeds"].shape == (1, TOKENS, expected.shape[1])
        assert saved["emb_mask"].tolist() == [mask.tolist()]
        np.testing.assert_allclose(saved["caption_embeds"][0, :real].float().numpy(), expected[:real], atol=2e-3)
    assert len(summary["embeddings"]["validation_prompts"]) == len(PIXART_VALIDATION_PROMPTS)

    cache = _files(dataset / "embeddings")
    names = {f"tmp/{prompt}_{TOKENS}token.pth" for prompt in PIXART_VALIDATION_PROMPTS}
    assert set(cache) == names | {"null_embed_diffusers_300token.pth", "prompts.tar", "embeddings.json"}
    assert (
        cache["null_embed_diffusers_300token.pth"]
        == _files(dest / "output")["pretrained_models/null_embed_diffusers_300token.pth"]
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _point_t5_at(dataset, tmp_path / "t5-gone")  # the second export must not need the T5 at all
    again = tmp_path / "second"
    assert main(["export", "pixart", str(dataset), str(again), "--flavor", "sigma"]) == 0
    second = json.loads((again / "export_summary.json").read_text())
    assert second["embeddings"]["source"] == "dataset" and second["t5_loaded"] is False
    assert _files(again / "output") == _files(dest / "output")
    assert _files(dataset / "embeddings") == cache


def test_t5_model_flag_overrides_the_manifest_path_of_a_url_dataset(make_dataset, pixart_t5, tmp_path):
    t5_folder, _ = pixart_t5
    dataset, _ = make_dataset(flavor="alpha", caption_format="dense", t5_model=str(tmp_path / "moved"), shards=1)
    url = f"file://{dataset}"  # the cache is written through fsspec, as for a remote dataset
    args = ["export", "pixart", url, str(tmp_path / "out"), "--flavor", "alpha", "--t5-model", str(t5_folder)]
    assert main(args) == 0
    null = torch.load(tmp_path / "out/output/pretrained_models/null_embed_diffusers_120token.pth", weights_only=True)
    assert null["uncond_prompt_embeds"].shape[:2] == (1, 120)
    assert (dataset / "embeddings/null_embed_diffusers_120token.pth").is_file()


def test_a_read_only_dataset_still_gets_a_complete_export(make_dataset, pixart_t5, tmp_path, monkeypatch):
    from curation.pixart import embed

    t5_folder, _ = pixart_t5
    dataset, _ = make_dataset(caption_format="dense_short", t5_model=str(t5_folder), shards=1, per_shard=2)
    real_atomic_write = embed.atomic_write

    def read_only_dataset(fs, path, write):  # what writing into a read-only bucket or mount does
        if path.startswith(str(dataset)):
            raise PermissionError(f"{path}: read-only file system")
        real_atomic_write(fs, path, write)

    monkeypatch.setattr(embed, "atomic_write", read_only_dataset)
    assert main(["export", "pixart", str(dataset), str(tmp_path / "out"), "--flavor", "sigma"]) == 0
    summary = json.loads((tmp_path / "out/export_summary.json").read_text())
    assert summary["embeddings"]["source"] == "computed" and "read-only" in summary["embeddings"]["not_cached"]
    assert any("not cached" in note for note in summary["notes"])
    assert (tmp_path / "out/output/pretrained_models/null_embed_diffusers_300token.pth").is_file()
    assert len(list((tmp_path / "out/output/tmp").glob("*_300token.pth"))) == len(PIXART_VALIDATION_PROMPTS)
    assert not (dataset / "embeddings").exists()
