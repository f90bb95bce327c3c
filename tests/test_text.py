"""Caption text policies: Sigma strips only, alpha runs diffusers' DeepFloyd-IF cleaner twice."""

from __future__ import annotations

import pytest

from curation.text import clean_caption_alpha, prepare_t5_text

MESSY = "  A <b>Red</b> CAR parked near https://example.com/cars/red, photo by @someone  "


def test_alpha_lowercases_and_removes_urls_html_and_nicknames() -> None:
    cleaned = prepare_t5_text(MESSY, "alpha")

    assert cleaned == "a red car parked near , photo by"
    assert cleaned == cleaned.lower()
    assert "http" not in cleaned and "example.com" not in cleaned
    assert "<" not in cleaned and "@" not in cleaned


def test_alpha_cleaning_normalises_punctuation_and_html_entities() -> None:
    assert clean_caption_alpha("Sunset &amp; sea [HDR] {4k} | wallpaper") == "sunset sea hdr 4k wallpaper"


def test_alpha_cleaning_is_stable_on_clean_text() -> None:
    text = "a photo of a dog sitting on a wooden chair"
    assert prepare_t5_text(text, "alpha") == text


def test_none_only_strips() -> None:
    assert prepare_t5_text(MESSY, "none") == MESSY.strip()
    assert prepare_t5_text("\n\tKeep CASE <i>and</i> tags  ", "none") == "Keep CASE <i>and</i> tags"


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="policy"):
        prepare_t5_text("x", "sigma")  # type: ignore[arg-type]


def test_missing_cleaning_dependency_raises_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "is_ftfy_available", lambda: False)
    with pytest.raises(ImportError, match="ftfy"):
        prepare_t5_text(MESSY, "alpha")
    assert prepare_t5_text(MESSY, "none") == MESSY.strip()  # Sigma never needs the cleaner
