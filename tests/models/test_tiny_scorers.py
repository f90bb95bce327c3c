"""Tiny scorer models: the real checkpoints' files and layouts, loadable by the real loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from curation.models.tiny_scorers import CLIP_DIM, write_tiny_scorers

OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class PublishedMLP(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor ``simple_inference.py``'s MLP (the ReLUs are commented
    out there), rebuilt here independently of the code under test."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_scorers(tmp_path_factory.mktemp("scorers"))


def test_clip_is_saved_in_the_openai_layout_and_loads_with_the_auto_classes(tiny):
    from transformers import AutoProcessor, CLIPModel, CLIPTokenizer

    folder = tiny["clip"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"} <= {
        path.name for path in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["projection_dim"] == CLIP_DIM
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"shortest_edge": 224} and preprocessor["crop_size"] == {
        "height": 224,
        "width": 224,
    }
    assert (preprocessor["image_mean"], preprocessor["image_std"], preprocessor["resample"]) == (
        OPENAI_MEAN,
        OPENAI_STD,
        3,
    )

    model = CLIPModel.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "CLIPProcessor"
    # vocab.json + merges.txt alone give the same tokens as tokenizer.json; the special tokens come last.
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:]]
    from_files = CLIPTokenizer(vocab=vocab, merges=merges)
    text = "a photo of a cat on the beach, zebra!"
    assert from_files(text).input_ids == processor.tokenizer(text).input_ids
    assert processor.tokenizer(text).input_ids[0] == len(vocab) - 2 == vocab["<|startoftext|>"]
    assert processor.tokenizer(text).input_ids[-1] == len(vocab) - 1 == vocab["<|endoftext|>"]
    assert model.config.text_config.eos_token_id == vocab["<|endoftext|>"]
    pixels = processor(images=torch.zeros(3, 300, 260, dtype=torch.uint8), return_tensors="pt")["pixel_values"]
    features = model.get_image_features(pixel_values=pixels)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    assert pixels.shape == (1, 3, 224, 224) and features.shape == (1, CLIP_DIM)


def test_aesthetic_weights_are_a_plain_state_dict_with_the_published_keys(tiny):
    state = torch.load(tiny["aesthetic"], map_location="cpu", weights_only=True)
    assert tiny["aesthetic"].name == "sac+logos+ava1-l14-linearMSE.pth"
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert shapes == {
        "layers.0.weight": (1024, CLIP_DIM),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }
    PublishedMLP(CLIP_DIM).load_state_dict(state)  # strict: same keys, same shapes


@pytest.mark.parametrize(
    ("name", "labels"), [("nsfw", ["normal", "nsfw"]), ("watermark", ["no_watermark", "watermark"])]
)
def test_classifiers_are_vit_image_classifiers_with_their_labels(tiny, name, labels):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny[name])
    processor = AutoImageProcessor.from_pretrained(tiny[name])
    assert type(model).__name__ == "ViTForImageClassification"
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert {key: model.config.label2id[key] for key in labels} == {label: i for i, label in enumerate(labels)}
    preprocessor = json.loads((tiny[name] / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "ViTImageProcessor"
    assert preprocessor["size"] == {"height": 224, "width": 224} and preprocessor["image_mean"] == [0.5] * 3
    logits = model(**processor(images=torch.zeros(3, 50, 80, dtype=torch.uint8), return_tensors="pt")).logits
    assert logits.shape == (1, len(labels))


def test_the_two_classifiers_have_different_weights(tiny):
    from safetensors.torch import load_file

    nsfw, watermark = load_file(tiny["nsfw"] / "model.safetensors"), load_file(tiny["watermark"] / "model.safetensors")
    assert nsfw.keys() == watermark.keys()
    assert not torch.equal(nsfw["classifier.weight"], watermark["classifier.weight"])
