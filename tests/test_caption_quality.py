"""Caption cleaning, quality flags and the per-caption maps (shared by every caption backend)."""

from __future__ import annotations

import json

import pytest

from curation.caption_quality import (
    FLAGS,
    GeneratedCaption,
    caption_flags,
    clean_caption,
    settle_row,
    store_caption,
)
from curation.config import CaptionQuality
from curation.records import FAILED, OK, REJECTED, new_row

QUALITY = CaptionQuality()
PROMPT = "Describe this image and its style in a very detailed manner."


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("The image shows a red car parked on a street.", "A red car parked on a street."),
        ("In this image, two dogs   play\n in the snow.", "Two dogs play in the snow."),
        ("ASSISTANT: This picture depicts a lighthouse at dusk.", "A lighthouse at dusk."),
        ("The photograph captures an old bridge.", "An old bridge."),
        ("A cat sleeping on a sofa.", "A cat sleeping on a sofa."),
        ("  the image is of a mountain lake ", "A mountain lake"),
        ("Images of the sea are rare.", "Images of the sea are rare."),
    ],
)
def test_clean_caption_strips_artefacts_and_openers(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_repetition_loop_is_flagged() -> None:
    looping = "A man with a hat paear paear paear paear paear paear paear paear"
    assert "repetition" in caption_flags(looping, PROMPT, None, True, QUALITY)
    ngram_loop = "a red car and a red car and a red car and a red car"
    assert "repetition" in caption_flags(ngram_loop, PROMPT, None, True, QUALITY)
    varied = "A red car parked beside a brick wall under a grey winter sky, with snow on its roof."
    assert caption_flags(varied, PROMPT, None, True, QUALITY) == []


def test_unique_word_ratio_catches_loops_without_repeated_trigrams() -> None:
    quality = CaptionQuality(max_ngram_repeats=10)
    two_words = " ".join(["sky", "blue"] * 10)  # 20 words, 2 unique: ratio 0.1 < 0.3
    assert caption_flags(two_words, PROMPT, None, True, quality) == ["repetition"]


def test_length_echo_and_truncation_flags() -> None:
    assert caption_flags("Cat.", PROMPT, None, True, QUALITY) == ["too_short"]
    assert "too_long" in caption_flags(" ".join(f"w{i}" for i in range(401)), PROMPT, None, True, QUALITY)
    echo = "Describe this image and its style in a very detailed manner: a cat."
    assert caption_flags(echo, PROMPT, None, True, QUALITY) == ["echoes_prompt"]
    assert caption_flags("A red Car!", PROMPT, "a red car", True, QUALITY) == ["echoes_alt"]
    assert caption_flags("A red car on a hill", PROMPT, None, False, QUALITY) == ["truncated"]
    assert set(FLAGS) == {"repetition", "too_short", "too_long", "echoes_prompt", "echoes_alt", "truncated"}


def test_store_caption_fills_every_map_and_orders_captions() -> None:
    row = new_row("k", "mem://k", b"", alt="an alt")
    store_caption(row, "short", GeneratedCaption("The image shows a cat.", 7, True), PROMPT, QUALITY)
    store_caption(row, "dense", GeneratedCaption("A cat on a sofa by a window.", 12, False), PROMPT, QUALITY)
    assert list(json.loads(row["captions"])) == ["dense", "short", "alt"]
    assert json.loads(row["captions"])["short"] == "A cat."
    assert json.loads(row["caption_status"]) == {"short": "ok", "dense": "truncated"}
    assert json.loads(row["caption_tokens"]) == {"short": 7, "dense": 12}
    assert json.loads(row["caption_flags"]) == {"short": ["too_short"], "dense": ["truncated"]}
    settle_row(row, "caption", QUALITY)
    assert row["status"] == OK


def test_an_errored_job_fails_the_row_with_its_message() -> None:
    row = new_row("k", "mem://k", b"")
    store_caption(row, "dense", GeneratedCaption("A cat.", 3, True), PROMPT, QUALITY)
    store_caption(row, "short", GeneratedCaption("", 0, False, error="engine died"), PROMPT, QUALITY)
    assert (row["status"], row["reason"], row["detail"]) == (FAILED, "error", "short: engine died")


def test_policies_empty_primary_fails_and_reject_uses_the_counted_flags() -> None:
    empty = new_row("e", "mem://e", b"")
    store_caption(empty, "dense", GeneratedCaption("   ", 1, True), PROMPT, QUALITY)
    settle_row(empty, "caption", QUALITY)
    assert (empty["status"], empty["reason"]) == (FAILED, "empty_caption")

    strict = CaptionQuality(policy="reject")
    looping = new_row("l", "mem://l", b"")
    store_caption(looping, "dense", GeneratedCaption("paear " * 12, 12, False), PROMPT, strict)
    settle_row(looping, "caption", strict)
    assert (looping["status"], looping["reason"], looping["detail"]) == (
        REJECTED,
        "caption_quality",
        "dense: repetition",
    )

    truncated_only = new_row("t", "mem://t", b"")
    store_caption(truncated_only, "dense", GeneratedCaption("A fine long caption of a dog", 9, False), PROMPT, strict)
    settle_row(truncated_only, "caption", strict)
    assert truncated_only["status"] == OK  # truncated is a flag, not in the default reject_flags
