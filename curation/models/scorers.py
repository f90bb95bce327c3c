"""Model scorers behind one interface: a batch of uint8 images (and their alt texts) in, one float per image out.

- ``aesthetic``: LAION's improved aesthetic predictor (``sac+logos+ava1-l14-linearMSE.pth``), an MLP on the
  L2-normalised CLIP ViT-L/14 image embedding, with the published module structure and key names;
- ``nsfw`` / ``watermark``: P(positive class) of an ``AutoModelForImageClassification`` checkpoint;
- ``clip_similarity``: cosine of the CLIP image and alt-text embeddings (NaN, i.e. no score, without alt).

Inputs are the filter's prepared ``scorer`` view: a square uint8 crop in CLIP's geometry. When a processor's
resize and crop leave that view unchanged (CLIP / ViT / SigLIP processors at the view's size), only its
rescale and normalisation run, on the device, on the uint8 batch (``pixel_values``); otherwise the
processor itself runs on CPU. Either way the model sees what its own processor would give it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from curation.config import AestheticScoreConfig, ClassifierScoreConfig, ModelRef, ScorersConfig
from curation.models.wrappers import load_pretrained, load_processor, load_state_dict, weights_file

Texts = Sequence[str | None] | None

# Processors whose only steps are resize, centre crop, rescale and normalise (PIL, torchvision or fast variants).
_PLAIN_PROCESSORS = ("CLIPImageProcessor", "ViTImageProcessor", "SiglipImageProcessor")


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def keeps_geometry(processor, height: int, width: int) -> bool:
    """True when the processor's resize and centre crop are identities on a ``height`` x ``width`` image."""
    name = type(processor).__name__.removesuffix("Pil").removesuffix("Fast")
    if name not in _PLAIN_PROCESSORS:
        return False
    if getattr(processor, "do_resize", False):
        size = processor.size
        shortest = _size_field(size, "shortest_edge")
        if shortest is not None and not (height == width == shortest):
            return False
        if shortest is None and (_size_field(size, "height"), _size_field(size, "width")) != (height, width):
            return False
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        return (_size_field(crop, "height"), _size_field(crop, "width")) == (height, width)
    return True


def pixel_values(processor, images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The model input of uint8 [B, H, W, 3] images: the processor's output, computed on the device when it can."""
    if not keeps_geometry(processor, images.shape[1], images.shape[2]):
        values = processor(images=list(images), return_tensors="pt")["pixel_values"]
        return values.to(device, dtype)
    batch = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    values = batch.permute(0, 3, 1, 2).to(torch.float32)
    if processor.do_rescale:
        values = values * processor.rescale_factor
    if processor.do_normalize:
        mean = torch.tensor(processor.image_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(processor.image_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        values = (values - mean) / std
    return values.to(dtype)


def l2_normalised(features: torch.Tensor) -> torch.Tensor:
    """float32 rows of unit L2 norm; a zero row stays zero (as the published predictor's ``normalized``)."""
    features = features.float()
    norm = features.norm(dim=-1, keepdim=True)
    return features / torch.where(norm == 0, torch.ones_like(norm), norm)


def _pooled(output) -> torch.Tensor:
    """``get_*_features`` returns the projected embeddings (transformers 4) or an output holding them (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class Scorer(ABC):
    """One score per image. ``setup()`` loads the models once per worker; ``score`` is called per micro-batch."""

    name: ClassVar[str]
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def score(self, images: np.ndarray, texts: Texts = None) -> np.ndarray:
        """float32 [B] for uint8 [B, H, W, 3] images (``texts``: the rows' alt texts); NaN where there is no score."""


class ClipEmbedder:
    """``CLIPModel`` + its processor, shared by the CLIP-based scorers (loaded once, image embeddings of the
    last batch kept so the aesthetic and similarity scores of one batch run the vision tower once)."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model = None
        self.processor = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._last: tuple[np.ndarray, torch.Tensor] | None = None

    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoProcessor, CLIPModel

        self.model, self.device, self.dtype = load_pretrained(CLIPModel, self.ref)
        self.processor = load_processor(AutoProcessor, self.ref)

    @torch.inference_mode()
    def image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """float32 [B, D], unit norm. Holding the array in the cache keeps its id from being reused."""
        if self._last is not None and self._last[0] is images:
            return self._last[1]
        values = pixel_values(self.processor.image_processor, images, self.device, self.dtype)
        embeddings = l2_normalised(_pooled(self.model.get_image_features(pixel_values=values)))
        self._last = (images, embeddings)
        return embeddings

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """float32 [N, D], unit norm; texts longer than the text tower's context are truncated."""
        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return l2_normalised(_pooled(features))


class AestheticMLP(nn.Module):
    """The published predictor's module: ``layers`` = Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear,
    Linear (no activations; state-dict keys ``layers.{0,2,4,6,7}.*``), 768 inputs for CLIP ViT-L/14."""

    def __init__(self, input_size: int = 768) -> None:
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

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def load_aesthetic_mlp(ref: ModelRef, filename: str, **hub_extra: Any) -> AestheticMLP:
    """The MLP from its state dict (input width read from ``layers.0.weight``), float32, eval mode, on CPU."""
    state = load_state_dict(weights_file(ref, filename, **hub_extra))
    mlp = AestheticMLP(input_size=state["layers.0.weight"].shape[1])
    mlp.load_state_dict(state)
    return mlp.eval()


class AestheticScorer(Scorer):
    name = "aesthetic"

    def __init__(self, config: AestheticScoreConfig, clip: ClipEmbedder) -> None:
        self.config = config
        self.clip = clip
        self.mlp: AestheticMLP | None = None

    def setup(self) -> None:
        self.clip.setup()
        self.device, self.dtype = self.clip.device, self.clip.dtype
        mlp = load_aesthetic_mlp(self.config.model, self.config.weights_file)
        width = self.clip.model.config.projection_dim
        if mlp.layers[0].in_features != width:
            raise ValueError(f"aesthetic MLP takes {mlp.layers[0].in_features}-d embeddings, the CLIP gives {width}")
        self.mlp = mlp.to(self.device)  # float32: the head is tiny, and the published one ran in float32

    @torch.inference_mode()
    def score(self, images: np.ndarray, texts: Texts = None) -> np.ndarray:
        return self.mlp(self.clip.image_embeddings(images))[:, 0].cpu().numpy().astype(np.float32)


class ClipSimilarityScorer(Scorer):
    name = "clip_similarity"

    def __init__(self, clip: ClipEmbedder) -> None:
        self.clip = clip

    def setup(self) -> None:
        self.clip.setup()
        self.device, self.dtype = self.clip.device, self.clip.dtype

    @torch.inference_mode()
    def score(self, images: np.ndarray, texts: Texts = None) -> np.ndarray:
        scores = np.full(len(images), np.nan, dtype=np.float32)
        with_alt = [i for i, text in enumerate(texts or []) if text and text.strip()]
        if not with_alt:
            return scores
        image = self.clip.image_embeddings(images)[with_alt]
        text = self.clip.text_embeddings([texts[i].strip() for i in with_alt])
        scores[with_alt] = (image * text).sum(dim=-1).cpu().numpy()
        return scores


def positive_index(model_config, label: str | int) -> int:
    """Index of the positive class: an index as given, or a label name looked up in id2label (case-insensitive)."""
    labels = {int(index): str(name) for index, name in model_config.id2label.items()}
    if isinstance(label, int):
        if label not in labels:
            raise ValueError(f"positive_label {label} is not a class index of this model ({labels})")
        return label
    matches = [index for index, name in labels.items() if name.lower() == label.lower()]
    if len(matches) != 1:
        raise ValueError(f"positive_label {label!r} does not name one class of this model ({labels})")
    return matches[0]


class ClassifierScorer(Scorer):
    """P(positive class): softmax over the classes, or a sigmoid for multi-label checkpoints."""

    def __init__(self, name: str, config: ClassifierScoreConfig) -> None:
        self.name = name
        self.config = config
        self.model = None
        self.processor = None
        self.index = 0

    def setup(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model, self.device, self.dtype = load_pretrained(AutoModelForImageClassification, self.config.model)
        self.processor = load_processor(AutoImageProcessor, self.config.model)
        label = self.config.positive_label if self.config.positive_label is not None else self.name
        self.index = positive_index(self.model.config, label)

    @torch.inference_mode()
    def score(self, images: np.ndarray, texts: Texts = None) -> np.ndarray:
        logits = self.model(pixel_values=pixel_values(self.processor, images, self.device, self.dtype)).logits.float()
        if self.model.config.problem_type == "multi_label_classification":
            probabilities = logits.sigmoid()
        else:
            probabilities = logits.softmax(dim=-1)
        return probabilities[:, self.index].cpu().numpy().astype(np.float32)


def build_scorers(config: ScorersConfig) -> list[Scorer]:
    """The enabled scorers in ``SCORE_NAMES`` order, not yet set up (one CLIP shared by the CLIP-based ones)."""
    clip = ClipEmbedder(config.clip) if config.clip is not None else None
    makers = {
        "aesthetic": lambda: AestheticScorer(config.aesthetic, clip),
        "nsfw": lambda: ClassifierScorer("nsfw", config.nsfw),
        "watermark": lambda: ClassifierScorer("watermark", config.watermark),
        "clip_similarity": lambda: ClipSimilarityScorer(clip),
    }
    return [makers[name]() for name in config.enabled]
