"""Tiny random-weight scorer models, saved in the layouts of the real checkpoints (``curate tiny-models``).

- ``DIR/clip``: ``CLIPModel`` with its tokenizer (``vocab.json``, ``merges.txt``, ``tokenizer.json``: byte-level
  BPE with ``</w>`` word ends and ``<|startoftext|>`` / ``<|endoftext|>`` last, as OpenAI's) and image processor
  (``preprocessor_config.json``: shortest edge 224, centre crop 224, OpenAI mean/std), like
  ``openai/clip-vit-large-patch14``; the towers are 2 layers wide 32 on 224 px images in 32 px patches, and
  the embeddings have ``CLIP_DIM`` dimensions (768 in ViT-L/14).
- ``DIR/aesthetic/sac+logos+ava1-l14-linearMSE.pth``: a ``torch.save``d state dict with the published
  predictor's keys (``layers.{0,2,4,6,7}.{weight,bias}``) taking ``CLIP_DIM`` inputs.
- ``DIR/nsfw`` and ``DIR/watermark``: ``ViTForImageClassification`` with ``id2label`` and a 224x224
  ``ViTImageProcessor`` (mean/std 0.5), like ``Falconsai/nsfw_image_detection``.

Weights are random, so the scores mean nothing; every file, loader and shape is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from curation.config import AESTHETIC_WEIGHTS_FILE

CLIP_DIM = 16
IMAGE_SIDE, PATCH = 224, 32
NSFW_LABELS = {0: "normal", 1: "nsfw"}  # Falconsai/nsfw_image_detection's id2label
WATERMARK_LABELS = {0: "no_watermark", 1: "watermark"}
_SEED = 0
_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_WORDS = (  # noqa: SIM905 (one readable pool of words)
    "a an the of in on at with and photo image picture painting drawing of cat dog bird car house tree "
    "flower mountain river beach city street person woman man child red blue green white black small large"
).split()


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI's vocab order: the 256 byte symbols, the same with ``</w>``, merges, then the two special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(_WORDS):  # merge each word left to right into one token
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            pieces = [pair[0] + pair[1], *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _write_clip_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return tokenizer


def write_tiny_clip(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_clip_tokenizer(directory)
    CLIPImageProcessorPil().save_pretrained(directory)  # OpenAI's: shortest edge 224, crop 224, bicubic
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **_TOWER, **ids),
        vision_config=dict(image_size=IMAGE_SIDE, patch_size=PATCH, **_TOWER),
        projection_dim=CLIP_DIM,
    )
    torch.manual_seed(_SEED)
    CLIPModel(config).save_pretrained(directory)
    return directory


def write_tiny_aesthetic(path: Path, input_size: int = CLIP_DIM) -> Path:
    from curation.models.scorers import AestheticMLP

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(_SEED)
    torch.save(AestheticMLP(input_size).state_dict(), path)
    return path


def write_tiny_classifier(directory: Path, id2label: dict[int, str], seed: int = _SEED) -> Path:
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = ViTConfig(
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
        **_TOWER,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        problem_type="single_label_classification",
    )
    torch.manual_seed(seed)
    ViTForImageClassification(config).save_pretrained(directory)
    processor = ViTImageProcessorPil(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, resample=2)  # bilinear
    processor.save_pretrained(directory)
    return directory


def write_tiny_scorers(directory: str | Path) -> dict[str, Path]:
    """Every tiny scorer model under ``directory``; returns {name: path} (the aesthetic path is the .pth file)."""
    root = Path(directory)
    return {
        "clip": write_tiny_clip(root / "clip"),
        "aesthetic": write_tiny_aesthetic(root / "aesthetic" / AESTHETIC_WEIGHTS_FILE),
        "nsfw": write_tiny_classifier(root / "nsfw", NSFW_LABELS, seed=1),
        "watermark": write_tiny_classifier(root / "watermark", WATERMARK_LABELS, seed=2),
    }
