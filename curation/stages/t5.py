"""T5 caption features: real tokens only (caption tokens + EOS), float16, as PixArt's loaders pad them.

PixArt encodes each caption padded to ``max_length`` and keeps the attention mask. Because T5's encoder
masks padding out of attention, the real-token rows do not depend on how much padding follows, so we
sort captions by length and pad each micro-batch only to its longest caption: the same features for a
fraction of the compute on short captions (tested against the padded-to-max_length procedure).
"""

from __future__ import annotations

import json
import time
from typing import ClassVar

import numpy as np
import torch

from curation.config import PRIMARY_CAPTION, T5Config
from curation.io.layout import npy_bytes, npz_bytes
from curation.models.wrappers import load_pretrained, load_processor
from curation.records import Row
from curation.stages.base import Stage
from curation.text import prepare_t5_text

Encoded = tuple[np.ndarray, int, bool]  # (features [n_tokens, D], n_tokens, truncated)


def load_t5_tokenizer(config: T5Config):
    """``T5Tokenizer`` as PixArt-Σ loads it; ``AutoTokenizer`` for repos that only ship another kind."""
    from transformers import AutoTokenizer, T5Tokenizer

    try:
        return load_processor(T5Tokenizer, config.model, config.tokenizer_subfolder)
    except (OSError, ValueError, TypeError):
        return load_processor(AutoTokenizer, config.model, config.tokenizer_subfolder)


class T5Stage(Stage):
    name = "t5"
    uses_model: ClassVar[bool] = True
    default_rows_per_block: ClassVar[int] = 256  # rows are small here; a big block sorts better by length

    def __init__(self, config: T5Config, caption_names: list[str] | None = None) -> None:
        """``caption_names``: the captions to encode (default: every caption of the row but the alt text)."""
        super().__init__(config.resources)
        self.config = config
        self.caption_names = list(caption_names) if caption_names else None
        self.tokenizer = None
        self.encoder = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def setup(self) -> None:
        from transformers import T5EncoderModel

        self.tokenizer = load_t5_tokenizer(self.config)
        self.encoder, self.device, self.dtype = load_pretrained(
            T5EncoderModel, self.config.model, self.config.encoder_subfolder
        )

    def encode(self, texts: list[str], dtype: type[np.floating] = np.float16) -> list[Encoded]:
        """Encode texts as given (no cleaning here), in input order; features are ``dtype`` (float16 stored)."""
        if not texts:
            return []
        if self.encoder is None:
            self.setup()
        full_lengths = self._untruncated_lengths(texts)
        order = sorted(range(len(texts)), key=lambda i: full_lengths[i], reverse=True)
        results: list[Encoded | None] = [None] * len(texts)
        batch_size = self.resources.batch_size
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            features = self._encode_batch([texts[i] for i in indices])
            for index, array in zip(indices, features, strict=True):
                truncated = full_lengths[index] > self.config.max_length
                results[index] = (array.astype(dtype), array.shape[0], truncated)
        return results

    def encode_padded(self, text: str) -> tuple[np.ndarray, int]:
        """PixArt's own procedure for one text: padded to max_length, all T rows kept (float32), + real count.

        Used for the null embedding, whose padding rows PixArt-Σ copies into ``y_embedding``.
        """
        if self.encoder is None:
            self.setup()
        hidden, real = self._run_encoder([text], padding="max_length")
        return hidden[0], int(real[0].sum())

    def _untruncated_lengths(self, texts: list[str]) -> list[int]:
        """Token counts including EOS, before truncation (so over-long captions can be flagged)."""
        encoded = self.tokenizer(texts, padding=False, truncation=False, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One micro-batch padded to its longest caption; returns each caption's real-token rows (float32)."""
        hidden, real = self._run_encoder(texts, padding="longest")
        # Selecting by mask (not ``[:count]``) also holds for a tokenizer that pads on the left.
        return [hidden[row][real[row]] for row in range(len(texts))]

    @torch.inference_mode()
    def _run_encoder(self, texts: list[str], padding: str) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize (truncating at max_length) and encode: float32 hidden states [B, L, D] and the real-token mask."""
        tokens = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.config.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )
        started = time.perf_counter()
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.encoder(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        result = hidden.float().cpu().numpy(), mask.bool().cpu().numpy()
        self.metrics.add_model_time(time.perf_counter() - started, self._flops(tokens["input_ids"].shape))
        return result

    def _flops(self, shape: torch.Size) -> float | None:
        def compute() -> float:
            from curation.models.flops import t5_encoder_flops

            return t5_encoder_flops(self.encoder.config, [shape[1]] * shape[0])

        return self.metrics.count_flops(compute)

    def process_rows(self, rows: list[Row]) -> None:
        self.isolate_failures(rows, self._encode_rows)

    def _encode_rows(self, rows: list[Row]) -> None:
        """Every named caption of every row in one length-sorted pass; the primary's features go to ``t5``."""
        jobs = [(row, name, text) for row in rows for name, text in self._texts(row).items()]
        encoded = self.encode([text for _, _, text in jobs])
        per_row: dict[int, dict[str, Encoded]] = {id(row): {} for row in rows}
        for (row, name, _), result in zip(jobs, encoded, strict=True):
            per_row[id(row)][name] = result
        for row in rows:
            store_features(row, per_row[id(row)])

    def _texts(self, row: Row) -> dict[str, str]:
        """The captions to encode, cleaned as the flavor's T5 input; the primary must be there."""
        captions = json.loads(row["captions"])
        if PRIMARY_CAPTION not in captions:
            raise ValueError(f"no {PRIMARY_CAPTION!r} caption to encode")
        names = self.caption_names or [name for name in captions if name != "alt"]
        cleaning = self.config.caption_cleaning
        return {name: prepare_t5_text(captions[name], cleaning) for name in names if name in captions}


def store_features(row: Row, encoded: dict[str, Encoded]) -> None:
    primary, primary_tokens, primary_truncated = encoded[PRIMARY_CAPTION]
    others = {name: features for name, (features, _, _) in encoded.items() if name != PRIMARY_CAPTION}
    row.update(t5=npy_bytes(primary), t5_tokens=primary_tokens, t5_truncated=primary_truncated)
    row["t5_extra"] = npz_bytes(others) if others else None
    row["caption_t5_tokens"] = json.dumps({name: tokens for name, (_, tokens, _) in encoded.items()})
    row["caption_t5_truncated"] = json.dumps({name: truncated for name, (_, _, truncated) in encoded.items()})
