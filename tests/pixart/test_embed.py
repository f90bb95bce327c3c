"""``curate embed-prompts``: our shard format and PixArt's .pth files, from the dataset's own T5."""

import json
import tarfile

import numpy as np
import torch

from curation.cli import main
from curation.config import T5Config
from curation.io.layout import load_npy
from curation.stages.t5 import T5Stage


def test_embed_prompts_writes_both_formats(demo_dataset, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na photo of a dog\nskipped/slash\n")
    out = tmp_path / "embeddings"
    assert main(["embed-prompts", str(demo_dataset), "--prompts", str(prompts), "--out", str(out)]) == 0
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    length = manifest["config"]["t5"]["max_length"]

    null = torch.load(out / f"null_embed_diffusers_{length}token.pth", weights_only=True)
    assert null["uncond_prompt_embeds"].shape[:2] == (1, length)
    assert torch.equal(null["uncond_prompt_embeds_mask"], null["uncond_prompt_attention_mask"])
    assert null["uncond_prompt_embeds_mask"].sum() == 1  # "" is EOS only

    stage = T5Stage(T5Config.model_validate(manifest["config"]["t5"]))
    expected, tokens, _ = stage.encode(["a red fox in the snow"])[0]
    saved = torch.load(out / "tmp" / f"a red fox in the snow_{length}token.pth", weights_only=True)
    assert saved["caption_embeds"].shape[:2] == (1, length) and saved["emb_mask"].sum() == tokens
    np.testing.assert_allclose(
        saved["caption_embeds"][0, :tokens].float().numpy(), expected.astype(np.float32), atol=1e-3
    )

    with tarfile.open(out / "prompts.tar") as tar:
        names = tar.getnames()
        assert {"null.t5.npy", "prompt-0000.t5.npy", "prompt-0000.txt"} <= set(names)
        features = load_npy(tar.extractfile("prompt-0000.t5.npy").read())
    assert features.dtype == np.float16 and features.shape[0] == tokens
    summary = json.loads((out / "embeddings.json").read_text())
    assert summary["skipped_prompts"] == ["skipped/slash"]
