"""Caption text as it goes into T5, per PixArt family.

PixArt-Sigma encodes the raw caption (only ``.strip()``); PixArt-alpha's ``T5Embedder`` runs DeepFloyd-IF's
``clean_caption`` twice, which also lowercases. We reuse diffusers' copy of that cleaner
(``PixArtAlphaPipeline._clean_caption``) instead of vendoring 80 lines of regexes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

CaptionPolicy = Literal["none", "alpha"]


def _require_cleaning_dependencies() -> None:
    # diffusers only warns and skips cleaning when these are missing; a silently uncleaned alpha dataset
    # would look fine and train on different text than the model expects.
    from diffusers.utils import is_bs4_available, is_ftfy_available

    missing = [name for name, ok in (("beautifulsoup4", is_bs4_available()), ("ftfy", is_ftfy_available())) if not ok]
    if missing:
        needed = " and ".join(missing)
        raise ImportError(f"PixArt-alpha caption cleaning needs {needed}: pip install {' '.join(missing)}")


def clean_caption_alpha(text: str) -> str:
    """PixArt-alpha's caption policy: diffusers' ``_clean_caption`` applied twice."""
    _require_cleaning_dependencies()
    from diffusers import PixArtAlphaPipeline

    # ``_clean_caption`` is an instance method whose only use of ``self`` is ``self.bad_punct_regex``.
    holder = SimpleNamespace(bad_punct_regex=PixArtAlphaPipeline.bad_punct_regex)
    cleaned = PixArtAlphaPipeline._clean_caption(holder, text)
    return PixArtAlphaPipeline._clean_caption(holder, cleaned)


def prepare_t5_text(text: str, policy: CaptionPolicy) -> str:
    """The exact string handed to the T5 tokenizer: ``none`` strips (Sigma), ``alpha`` strips and cleans twice."""
    if policy == "none":
        return text.strip()
    if policy == "alpha":
        return clean_caption_alpha(text.strip())
    raise ValueError(f"unknown caption cleaning policy {policy!r} (expected 'none' or 'alpha')")
