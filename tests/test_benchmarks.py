"""The T5 benchmark is only meaningful if both sides compute the same features: check that, fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import T5EncoderModel, T5Tokenizer

from benchmarks.run import EQUIVALENCE_ATOL, bench_t5, pixart_t5, pseudo_captions
from curation.config import ModelRef, Resources, T5Config
from curation.stages.t5 import T5Stage

MAX_LENGTH = 64  # some captions below are longer: truncation is compared too


def test_t5_comparison_sides_compute_the_same_real_token_features(tiny_models: Path) -> None:
    model_dir = tiny_models / "pixart_sigma"
    captions = pseudo_captions(6, min_words=1, max_words=80, seed=1)

    result = bench_t5(model_dir, captions, batch_size=4, repeats=1, max_length=MAX_LENGTH)

    assert result["equivalent"] and result["token_counts_match"]
    assert result["max_abs_diff_fp32"] <= EQUIVALENCE_ATOL
    assert result["captions"] == 6 and result["max_length"] == MAX_LENGTH and result["d_model"] == 32
    assert set(result["seconds"]) == set(result["captions_per_s"]) == {"pixart_batched", "pixart_batch1", "ours"}
    assert all(s > 0 for s in result["seconds"].values())
    assert set(result["speedup"]) == {"vs_pixart_batched", "vs_pixart_batch1"}
    assert result["tokens"]["max"] == MAX_LENGTH  # the long captions were truncated on both sides
    storage = result["bytes_per_caption"]
    assert storage["measured"]["d"] == 32 and storage["d4096_scaled"]["d"] == 4096
    assert storage["ratio"] > 0 and storage["measured"]["ours_npy"] > 0

    # Independently of the result dict: each side, loaded on its own, row by row.
    stage = T5Stage(
        T5Config(
            model=ModelRef(path=str(model_dir), device="cpu", dtype="float32"),
            resources=Resources(batch_size=4, num_gpus=0),
            max_length=MAX_LENGTH,
        )
    )
    tokenizer = T5Tokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder").eval()
    ours = stage.encode(captions, dtype=np.float32)
    theirs = pixart_t5(tokenizer, encoder, captions, batch_size=4, max_length=MAX_LENGTH)
    for (features, n_tokens, _), (padded, mask) in zip(ours, theirs, strict=True):
        assert padded.shape == (1, MAX_LENGTH, 32)
        real = padded[0][mask[0].astype(bool)]
        assert features.shape == real.shape == (n_tokens, 32)
        np.testing.assert_allclose(features, real, rtol=0, atol=EQUIVALENCE_ATOL)
