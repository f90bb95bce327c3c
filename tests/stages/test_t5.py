"""T5 stage: length-sorted, longest-padded micro-batches give PixArt's padded-to-max_length features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import T5EncoderModel, T5Tokenizer

from curation.config import ModelRef, Resources, T5Config
from curation.io.layout import load_npy, load_npz
from curation.records import FAILED, OK, new_row
from curation.stages.t5 import T5Stage

MAX_LENGTH = 16
FP32_ATOL = 1e-5  # fp32 on CPU: only summation order differs between batch shapes
FP16_RTOL = 2**-10  # stored float16 vs fp32 reference: at most one float16 ulp (plus FP32_ATOL)

SHORT = "dog"
MEDIUM = "a photo of a brown dog sitting on a wooden chair"
LONG = " ".join(["a large golden telescope standing near the old stone bridge under a dark night sky"] * 4)
# Very different lengths, deliberately not sorted, and batch_size=2 so the padding differs per batch.
CAPTIONS = [MEDIUM, SHORT, LONG, "", "two cats and one bird", "red"]


def make_config(model_dir: Path, cleaning: str = "none") -> T5Config:
    return T5Config(
        model=ModelRef(path=str(model_dir), device="cpu", dtype="float32"),
        resources=Resources(batch_size=2),
        max_length=MAX_LENGTH,
        caption_cleaning=cleaning,
    )


@pytest.fixture(scope="module")
def sigma_dir(tiny_models: Path) -> Path:
    return tiny_models / "pixart_sigma"


@pytest.fixture(scope="module")
def stage(sigma_dir: Path) -> T5Stage:
    t5 = T5Stage(make_config(sigma_dir))
    t5.setup()
    return t5


@pytest.fixture(scope="module")
def pixart_reference(sigma_dir: Path):
    """PixArt's procedure, loaded independently: pad to max_length, truncate, keep mask-sum rows."""
    tokenizer = T5Tokenizer.from_pretrained(sigma_dir, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(sigma_dir, subfolder="text_encoder").eval()

    @torch.inference_mode()
    def encode(text: str) -> tuple[np.ndarray, int]:
        tokens = tokenizer(text, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        n_real = int(tokens.attention_mask.sum())
        return hidden[0, :n_real].numpy(), n_real

    return encode


def caption_row(key: str, text: str | None) -> dict:
    row = new_row(key, f"test/{key}", b"")
    row["captions"] = None if text is None else json.dumps({"dense": text})
    return row


def test_fp32_features_equal_padded_to_max_length_encode(stage: T5Stage, pixart_reference) -> None:
    encoded = stage.encode(CAPTIONS, dtype=np.float32)

    for text, (features, n_tokens, _) in zip(CAPTIONS, encoded, strict=True):
        expected, n_real = pixart_reference(text)
        assert n_tokens == n_real == features.shape[0]
        np.testing.assert_allclose(features, expected, rtol=0, atol=FP32_ATOL)


def test_rows_hold_float16_real_tokens_in_input_order(stage: T5Stage, pixart_reference) -> None:
    rows = [caption_row(f"k{i}", text) for i, text in enumerate(CAPTIONS)]

    stage.process_batch(rows)

    for text, row in zip(CAPTIONS, rows, strict=True):
        expected, n_real = pixart_reference(text)
        stored = load_npy(row["t5"])
        assert row["status"] == OK
        assert stored.dtype == np.float16 and stored.shape == (n_real, 32)
        assert row["t5_tokens"] == n_real
        np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=FP16_RTOL, atol=FP32_ATOL)


def test_long_caption_is_truncated_to_max_length_and_flagged(stage: T5Stage, sigma_dir: Path) -> None:
    tokenizer = T5Tokenizer.from_pretrained(sigma_dir, subfolder="tokenizer")
    assert len(tokenizer(LONG).input_ids) > MAX_LENGTH
    exact = next(t for t in (" ".join(["dog"] * n) for n in range(1, 40)) if len(tokenizer(t).input_ids) == MAX_LENGTH)
    rows = [caption_row("long", LONG), caption_row("short", SHORT), caption_row("exact", exact)]

    stage.process_batch(rows)

    long_row, short_row, exact_row = rows
    assert long_row["t5_tokens"] == MAX_LENGTH and long_row["t5_truncated"] is True
    assert load_npy(long_row["t5"]).shape == (MAX_LENGTH, 32)
    assert short_row["t5_truncated"] is False and short_row["t5_tokens"] == len(tokenizer(SHORT).input_ids)
    # exactly max_length tokens including EOS still fits: nothing was cut
    assert exact_row["t5_tokens"] == MAX_LENGTH and exact_row["t5_truncated"] is False


def test_empty_caption_is_just_eos(stage: T5Stage) -> None:
    [(features, n_tokens, truncated)] = stage.encode([""])
    assert (features.shape[0], n_tokens, truncated) == (1, 1, False)


def test_alpha_cleaning_is_applied_when_configured(tiny_models: Path) -> None:
    alpha_dir = tiny_models / "pixart_alpha"
    raw = "A <b>Red</b> CAR parked near https://example.com/cars, photo by @someone"
    alpha, sigma = T5Stage(make_config(alpha_dir, "alpha")), T5Stage(make_config(alpha_dir, "none"))
    alpha.setup()
    sigma.setup()
    rows = [caption_row("a", raw)]
    alpha.process_batch(rows)

    [(cleaned, _, _)] = sigma.encode(["a red car parked near , photo by"])
    [(uncleaned, _, _)] = sigma.encode([raw])
    stored = load_npy(rows[0]["t5"])
    np.testing.assert_array_equal(stored, cleaned)
    assert stored.shape != uncleaned.shape or not np.array_equal(stored, uncleaned)


def test_a_bad_row_fails_alone(stage: T5Stage) -> None:
    rows = [caption_row("good", MEDIUM), caption_row("no_caption", None), caption_row("good2", SHORT)]

    stage.process_batch(rows)

    assert [row["status"] for row in rows] == [OK, FAILED, OK]
    assert rows[1]["stage"] == "t5" and rows[1]["t5"] is None
    assert rows[0]["t5_tokens"] > 0 and rows[2]["t5_tokens"] > 0


def test_every_named_caption_is_encoded_and_only_those(sigma_dir: Path, pixart_reference) -> None:
    stage = T5Stage(make_config(sigma_dir), caption_names=["dense", "short", "alt"])
    stage.setup()
    rows = []
    for i, (dense, short) in enumerate([(MEDIUM, SHORT), (LONG, "red"), ("two cats and one bird", MEDIUM)]):
        row = new_row(f"k{i}", f"test/k{i}", b"")
        captions = {"dense": dense, "short": short, "tags": "not encoded"}
        if i == 0:
            captions["alt"] = "an alt text"
        row["captions"] = json.dumps(captions)
        rows.append(row)

    stage.process_batch(rows)

    for row in rows:
        captions = json.loads(row["captions"])
        extra = load_npz(row["t5_extra"])
        assert set(extra) == ({"short", "alt"} if "alt" in captions else {"short"})
        tokens, truncated = json.loads(row["caption_t5_tokens"]), json.loads(row["caption_t5_truncated"])
        assert set(tokens) == set(truncated) == {"dense", *extra}
        assert tokens["dense"] == row["t5_tokens"] and truncated["dense"] == row["t5_truncated"]
        for name, features in [("dense", load_npy(row["t5"])), *extra.items()]:
            expected, n_real = pixart_reference(captions[name])
            assert features.dtype == np.float16 and features.shape == (n_real, 32) and tokens[name] == n_real
            np.testing.assert_allclose(features.astype(np.float32), expected, rtol=FP16_RTOL, atol=FP32_ATOL)
    assert json.loads(rows[1]["caption_t5_truncated"]) == {"dense": True, "short": False}


def test_a_primary_only_recipe_writes_no_extra_features(stage: T5Stage) -> None:
    row = caption_row("solo", MEDIUM)
    stage.process_batch([row])
    assert row["t5_extra"] is None and json.loads(row["caption_t5_tokens"]) == {"dense": row["t5_tokens"]}
