"""The tiny models load through the same from_pretrained calls as the real checkpoints."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel
from transformers import AutoModelForImageTextToText, AutoProcessor, T5EncoderModel, T5Tokenizer
from transformers.utils import is_torchvision_available

from curation.models import tiny
from curation.models.tiny import T5_DIM, TINY_MODELS_VERSION, ensure_tiny_models, llava_hf_key


def test_layouts_match_the_real_repositories(tiny_models):
    for flavor in ("pixart_sigma", "pixart_alpha"):
        root = tiny_models / flavor
        assert {"tokenizer", "text_encoder", "vae", "transformer", "scheduler"} <= {p.name for p in root.iterdir()}
        assert (root / "tokenizer" / "spiece.model").is_file()  # as PixArt's diffusers repos ship it
        assert json.loads((root / "model_index.json").read_text())["_class_name"].startswith("PixArt")
    assert json.loads((tiny_models / "llava" / "config.json").read_text())["architectures"] == [
        "LlavaForConditionalGeneration"
    ]


def test_t5_tokenizer_is_a_real_sentencepiece_tokenizer(tiny_models):
    tokenizer = T5Tokenizer.from_pretrained(tiny_models / "pixart_sigma", subfolder="tokenizer")
    ids = tokenizer("a photo of a dog").input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1
    assert tokenizer.unk_token_id not in ids  # the words are in the trained vocabulary
    encoder = T5EncoderModel.from_pretrained(tiny_models / "pixart_sigma", subfolder="text_encoder")
    hidden = encoder(input_ids=torch.tensor([ids])).last_hidden_state
    assert hidden.shape == (1, len(ids), T5_DIM)


def test_vae_and_transformer_shapes(tiny_models):
    vae = AutoencoderKL.from_pretrained(tiny_models / "pixart_sigma", subfolder="vae")
    posterior = vae.encode(torch.zeros(1, 3, 64, 96)).latent_dist
    assert posterior.mean.shape == (1, 4, 8, 12)
    transformer = PixArtTransformer2DModel.from_pretrained(tiny_models / "pixart_sigma", subfolder="transformer")
    assert transformer.config.caption_channels == T5_DIM and transformer.config.sample_size == 32


def test_llava_generates_through_the_auto_classes(tiny_models):
    from PIL import Image

    processor = AutoProcessor.from_pretrained(tiny_models / "llava")
    model = AutoModelForImageTextToText.from_pretrained(tiny_models / "llava")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.startswith("USER: <image>") and prompt.endswith("ASSISTANT:")
    inputs = processor(images=[Image.new("RGB", (64, 40), "red")], text=[prompt], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize(
    "family, architecture",
    [
        ("llava_next", "LlavaNextForConditionalGeneration"),
        pytest.param(
            "llava_onevision",
            "LlavaOnevisionForConditionalGeneration",
            marks=pytest.mark.skipif(
                not is_torchvision_available(),
                reason="LlavaOnevisionProcessor needs LlavaOnevisionVideoProcessor, which needs torchvision",
            ),
        ),
    ],
)
def test_anyres_llavas_load_through_the_auto_classes(tiny_models, family, architecture):
    folder = tiny_models / family
    assert json.loads((folder / "config.json").read_text())["architectures"] == [architecture]
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == architecture
    assert type(processor).__name__ == architecture.replace("ForConditionalGeneration", "Processor")
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints
    assert processor.image_token_id == model.config.image_token_id


def test_onevision_is_written_only_with_torchvision(tiny_models):
    assert (tiny_models / "llava_onevision").is_dir() == is_torchvision_available()


def test_pipeline_loads_without_text_encoder(tiny_models):
    pipeline = PixArtSigmaPipeline.from_pretrained(tiny_models / "pixart_sigma", text_encoder=None, tokenizer=None)
    assert pipeline.text_encoder is None and pipeline.transformer is not None


def test_ensure_is_idempotent(tiny_models):
    before = (tiny_models / "llava" / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_models(tiny_models)
    assert (tiny_models / "llava" / "model.safetensors").stat().st_mtime_ns == before


LLAVA_FOLDERS = [
    "llava",
    "llava_next",
    pytest.param(
        "llava_onevision",
        marks=pytest.mark.skipif(not is_torchvision_available(), reason="OneVision is written only with torchvision"),
    ),
]
# The weight names of the llava-hf hub checkpoints, which vLLM loads as they are.
HUB_PREFIXES = (
    "language_model.model.",
    "language_model.lm_head.",
    "vision_tower.vision_model.",
    "multi_modal_projector.",
    "image_newline",
)


def fingerprints(tensors) -> list[tuple]:
    return sorted((tuple(t.shape), t.detach().contiguous().numpy().tobytes()) for t in tensors)


@pytest.mark.parametrize("family", LLAVA_FOLDERS)
def test_llavas_are_saved_in_the_llava_hf_hub_layout_and_load_every_weight(tiny_models, family):
    from safetensors.torch import load_file

    weights = load_file(tiny_models / family / "model.safetensors")
    assert all(name.startswith(HUB_PREFIXES) for name in weights)
    assert {
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "multi_modal_projector.linear_1.weight",
    } <= set(weights)
    model, info = AutoModelForImageTextToText.from_pretrained(tiny_models / family, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # Names differ in memory: compare contents. Every saved tensor is a model weight (none left at random init).
    assert fingerprints(weights.values()) == fingerprints(model.state_dict().values())
    assert torch.equal(model.get_output_embeddings().weight, weights["language_model.lm_head.weight"])
    assert torch.equal(model.get_input_embeddings().weight, weights["language_model.model.embed_tokens.weight"])


def test_llava_hf_key_maps_transformers_5_names_and_keeps_hub_names():
    cases = {
        "model.language_model.layers.0.mlp.up_proj.weight": "language_model.model.layers.0.mlp.up_proj.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "model.vision_tower.embeddings.patch_embedding.weight": (
            "vision_tower.vision_model.embeddings.patch_embedding.weight"
        ),
        "model.multi_modal_projector.linear_1.bias": "multi_modal_projector.linear_1.bias",
        "model.image_newline": "image_newline",
    }
    for name, hub in cases.items():
        assert llava_hf_key(name) == hub
        assert llava_hf_key(hub) == hub


@pytest.mark.parametrize("family", LLAVA_FOLDERS)
def test_language_model_head_dim_fits_vllm_cpu_attention(tiny_models, family):
    text = json.loads((tiny_models / family / "config.json").read_text())["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == text.get("head_dim", 32) == 32


def test_a_cache_from_another_version_is_rewritten(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(tiny, "write_tiny_models", lambda root: written.append(root))
    monkeypatch.setattr(tiny, "write_llava_onevision", lambda folder: written.append(folder))
    marker = tmp_path / ".complete"
    marker.write_text("ok\n")  # version 1's marker
    (tmp_path / "llava_onevision").mkdir()  # written by another venv, then not rewritten by this one
    ensure_tiny_models(tmp_path)
    assert written[0] == tmp_path and marker.read_text() == TINY_MODELS_VERSION + "\n"
    assert not (tmp_path / "llava_onevision").exists()
    written.clear()
    (tmp_path / "llava_onevision").mkdir()
    (tmp_path / "llava_onevision" / "model.safetensors").write_bytes(b"")
    ensure_tiny_models(tmp_path)
    assert written == []  # current: nothing rewritten
