"""The tiny models load through the same from_pretrained calls as the real checkpoints."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel
from transformers import AutoModelForImageTextToText, AutoProcessor, T5EncoderModel, T5Tokenizer
from transformers.utils import is_torchvision_available

from curation.models.tiny import T5_DIM, ensure_tiny_models


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
