"""Which caption fills each text field of a PixArt entry, and where its T5 features come from.

PixArt-Σ's loaders (``InternalDataMSSigma``, ``InternalDataSigma``; S:diffusion/data/datasets/) draw
``random.random() < real_prompt_ratio`` for every sample they read: true reads the entry's ``prompt`` and
``caption_features_new/NAME.npz``, false reads ``sharegpt4v`` and ``sharegpt4v_caption_features_new/NAME.npz``.
Σ trained on a short "real prompt" and a long ShareGPT4V caption, hence:

* Σ, datasets with per-caption T5 features (``caption_t5_tokens`` in ``KEY.json``): ``sharegpt4v`` is the
  dense caption with ``KEY.t5.npy``; ``prompt`` is the prompt caption (``short`` by default, or ``alt``)
  with ``KEY.t5.<name>.npy``, encoded at export only when that member is absent (alt text, which the
  build does not encode unless ``t5.captions`` names it). A sample without that caption (its generation
  came out empty, or it has no alt text) gets the dense caption and its features in both fields
  (``prompt_fallback_dense``), so every entry has both files and the default ratio 0.5 works.
* Σ, datasets built before per-caption features: as before, ``prompt`` is the dense caption and
  ``sharegpt4v`` the sample's other caption (its alt text), encoded at export when an encoder is given.
* α: ``prompt`` is the dense caption (α trains on one caption); there is no ``sharegpt4v``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.config import PRIMARY_CAPTION

PROMPT, SHAREGPT4V = "prompt", "sharegpt4v"  # the data_info.json fields, and the T5 folders they select
ENCODE_BATCH = 32

Encoder = Callable[[list[str]], list[np.ndarray]]


@dataclass(frozen=True)
class CaptionSource:
    name: str  # the caption's name in the dataset: dense, short, alt, …
    text: str
    member: str | None  # the tar member holding its T5 features; None: encode at export


@dataclass(frozen=True)
class EntryCaptions:
    prompt: CaptionSource
    sharegpt4v: CaptionSource | None
    outcome: str | None  # the summary counter this choice adds to


def feature_member(name: str) -> str:
    return "t5.npy" if name == PRIMARY_CAPTION else f"t5.{name}.npy"


def has_per_caption_features(meta: dict[str, Any]) -> bool:
    """Built with a T5 feature file per caption: ``caption_t5_tokens`` is a {caption name: tokens} map."""
    return isinstance(meta.get("caption_t5_tokens"), dict)


def choose_captions(flavor: str, meta: dict[str, Any], files: dict[str, bytes], prompt_caption: str) -> EntryCaptions:
    captions = meta.get("captions") or {}
    dense_text = captions.get(PRIMARY_CAPTION) or files.get("txt", b"").decode()
    dense = CaptionSource(PRIMARY_CAPTION, dense_text, "t5.npy")
    if flavor != "sigma":
        return EntryCaptions(dense, None, None)
    if not has_per_caption_features(meta):
        other = next(((name, text) for name, text in captions.items() if name != PRIMARY_CAPTION and text), None)
        return EntryCaptions(dense, CaptionSource(*other, None) if other else None, "legacy_format")
    text = captions.get(prompt_caption)
    if not text:
        return EntryCaptions(dense, dense, "prompt_fallback_dense")
    member = feature_member(prompt_caption)
    prompt = CaptionSource(prompt_caption, text, member if member in files else None)
    return EntryCaptions(prompt, dense, "prompt_caption")


def stored_features(
    captions: EntryCaptions, files: dict[str, bytes], load: Callable[[bytes], np.ndarray]
) -> tuple[dict[str, np.ndarray], list[tuple[str, CaptionSource]]]:
    """{field: features} read from the sample, and the (field, caption) pairs left to encode at export.

    One member used by both fields is loaded once, so the writer can hard-link the second npz.
    """
    loaded: dict[str, np.ndarray] = {}
    features: dict[str, np.ndarray] = {}
    to_encode: list[tuple[str, CaptionSource]] = []
    for field, source in ((PROMPT, captions.prompt), (SHAREGPT4V, captions.sharegpt4v)):
        if source is None:
            continue
        if source.member is None:
            to_encode.append((field, source))
            continue
        if source.member not in loaded:
            loaded[source.member] = load(files[source.member])
        features[field] = loaded[source.member]
    return features, to_encode


class ExportEncoder:
    """Encodes, in batches with the caller's encoders, captions that have no stored features; hands them on.

    ``write(key, field, features)`` writes one npz; ``encoded`` counts texts encoded, ``written`` the
    npz written per field.
    """

    def __init__(self, encoders: dict[str, Encoder] | None, write: Callable[[str, str, np.ndarray], None]) -> None:
        self.encoders, self.write = encoders or {}, write
        self.pending: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        self.encoded = 0
        self.written: Counter = Counter()

    def can_encode(self, name: str) -> bool:
        return name in self.encoders

    def add(self, key: str, field: str, source: CaptionSource) -> None:
        batch = self.pending[source.name]
        batch.append((key, field, source.text))
        if len(batch) >= ENCODE_BATCH:
            self._encode(source.name)

    def flush(self) -> None:
        for name in list(self.pending):
            self._encode(name)

    def _encode(self, name: str) -> None:
        keys, fields, texts = zip(*self.pending.pop(name), strict=True)
        features = self.encoders[name](list(texts))
        if len(features) != len(keys):
            raise ValueError(f"the {name!r} encoder returned {len(features)} arrays for {len(keys)} texts")
        for key, field, array in zip(keys, fields, features, strict=True):
            self.write(key, field, np.asarray(array))
            self.written[field] += 1
        self.encoded += len(keys)
