"""Caption text after generation: cleaning, quality flags, and the per-caption maps a row carries.

Shared by every caption backend (Hugging Face ``generate`` and vLLM), so the same generated text always
becomes the same stored caption, status and flags.

Flag vocabulary (``caption_flags`` in the sample json, {caption name: [flag, …]}):

- ``repetition``: a repetition loop — some n-gram (``quality.repeated_ngram`` words) occurs at least
  ``quality.max_ngram_repeats`` times, or, for captions of 12 words or more, unique words / words is below
  ``quality.min_unique_ratio``;
- ``too_short`` / ``too_long``: fewer than ``quality.min_words`` / more than ``quality.max_words`` words;
- ``echoes_prompt``: the caption repeats the instruction it was given (its first 6 words of the prompt,
  or the whole prompt, appear in the caption);
- ``echoes_alt``: the caption is the input's alt text again (same words, case and punctuation aside);
- ``truncated``: generation stopped at ``max_new_tokens`` before the end-of-sequence token.

Status (``caption_status``, per caption): ``ok`` | ``truncated`` | ``empty`` | ``error``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from curation.config import PRIMARY_CAPTION, CaptionQuality
from curation.records import FAILED, REJECTED, Row, mark

STATUS_OK = "ok"
STATUS_TRUNCATED = "truncated"  # generation hit max_new_tokens before the end-of-sequence token
STATUS_EMPTY = "empty"
STATUS_ERROR = "error"
FLAGS = ("repetition", "too_short", "too_long", "echoes_prompt", "echoes_alt", "truncated")
CAPTION_QUALITY = "caption_quality"  # reject reason

# Chat artefacts a model may leave at the start of its answer.
_ROLE_PREFIX = re.compile(r"^\s*(?:(?:assistant|gpt|answer|caption)\s*:\s*)+", re.IGNORECASE)
_BOILERPLATE = re.compile(
    r"^\s*(?:(?:the|this)\s+(?:image|picture|photo(?:graph)?)\s+(?:shows|depicts|features|displays|captures|is of)"
    r"|in\s+(?:the|this)\s+(?:image|picture|photo(?:graph)?)\s*,?"
    r"|(?:the|this)\s+(?:image|picture|photo(?:graph)?)\s+(?:is|presents))\s*(?:an?\s+image\s+of\s+)?",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class GeneratedCaption:
    """What a backend generated for one (row, caption job)."""

    text: str
    tokens: int  # generated tokens, end-of-sequence included when it came
    finished: bool  # ended by an end-of-sequence token (else it ran out of max_new_tokens)
    error: str = ""


def clean_caption(text: str) -> str:
    """Strip chat artefacts and boilerplate openers, normalise whitespace, capitalise the first letter."""
    text = " ".join(text.split())
    text = _ROLE_PREFIX.sub("", text)
    stripped = _BOILERPLATE.sub("", text, count=1).lstrip(" ,:;-")
    if stripped and stripped != text:
        text = stripped[0].upper() + stripped[1:]
    return text.strip()


def words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def caption_flags(text: str, prompt: str, alt: str | None, finished: bool, quality: CaptionQuality) -> list[str]:
    """The quality flags of one cleaned caption, in ``FLAGS`` order."""
    tokens = words(text)
    flags = set()
    if is_repetitive(tokens, quality):
        flags.add("repetition")
    if len(tokens) < quality.min_words:
        flags.add("too_short")
    if len(tokens) > quality.max_words:
        flags.add("too_long")
    if echoes(tokens, words(prompt)):
        flags.add("echoes_prompt")
    if alt and tokens and tokens == words(alt):
        flags.add("echoes_alt")
    if not finished:
        flags.add("truncated")
    return [flag for flag in FLAGS if flag in flags]


def is_repetitive(tokens: list[str], quality: CaptionQuality) -> bool:
    n = quality.repeated_ngram
    ngrams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if ngrams and max(ngrams.values()) >= quality.max_ngram_repeats:
        return True
    return len(tokens) >= 12 and len(set(tokens)) / len(tokens) < quality.min_unique_ratio


def echoes(tokens: list[str], prompt_words: list[str]) -> bool:
    probe = prompt_words[:6]
    if not probe or len(tokens) < len(probe):
        return False
    return any(tokens[i : i + len(probe)] == probe for i in range(len(tokens) - len(probe) + 1))


def status_of(caption: GeneratedCaption, text: str) -> str:
    if caption.error:
        return STATUS_ERROR
    if not text:
        return STATUS_EMPTY
    return STATUS_OK if caption.finished else STATUS_TRUNCATED


def json_map(row: Row, column: str) -> dict:
    return json.loads(row[column]) if row.get(column) else {}


def store_caption(row: Row, name: str, caption: GeneratedCaption, prompt: str, quality: CaptionQuality) -> list[str]:
    """Clean one generated caption into the row's maps; returns its flags."""
    text = "" if caption.error else clean_caption(caption.text)
    status = status_of(caption, text)
    flags = caption_flags(text, prompt, row.get("alt"), caption.finished, quality) if text else []
    captions, statuses = json_map(row, "captions"), json_map(row, "caption_status")
    tokens, all_flags = json_map(row, "caption_tokens"), json_map(row, "caption_flags")
    if text:
        captions[name] = text
    statuses[name], tokens[name], all_flags[name] = status, caption.tokens, flags
    row["captions"] = json.dumps(_ordered(captions, row.get("alt")), ensure_ascii=False)
    row["caption_status"] = json.dumps(statuses)
    row["caption_tokens"] = json.dumps(tokens)
    row["caption_flags"] = json.dumps(all_flags)
    if caption.error:  # a sample is written with every caption of the recipe or not at all (retried next run)
        mark(row, FAILED, "caption", "error", f"{name}: {caption.error}")
    return flags


def _ordered(captions: dict[str, str], alt: str | None) -> dict[str, str]:
    """Primary caption first, then the other jobs, then the input's alt text."""
    alt = (alt or "").strip()
    ordered = {PRIMARY_CAPTION: captions[PRIMARY_CAPTION]} if PRIMARY_CAPTION in captions else {}
    ordered.update((name, text) for name, text in captions.items() if name != "alt")
    if alt:
        ordered["alt"] = alt
    return ordered


def counted_flags(flags: list[str], quality: CaptionQuality) -> list[str]:
    """The flags that the retry / reject policy acts on."""
    return [flag for flag in flags if flag in quality.reject_flags]


def settle_row(row: Row, stage: str, quality: CaptionQuality) -> None:
    """After every job has been stored: fail rows without a primary caption, reject flagged ones by policy."""
    if row["status"] != "ok":
        return
    primary = json_map(row, "caption_status").get(PRIMARY_CAPTION)
    if primary in (STATUS_ERROR, None):
        mark(row, FAILED, stage, "error", f"no {PRIMARY_CAPTION} caption")
    elif primary == STATUS_EMPTY:
        mark(row, FAILED, stage, "empty_caption", "the model generated no text")
    elif quality.policy == "reject":
        flagged = {name: counted_flags(flags, quality) for name, flags in json_map(row, "caption_flags").items()}
        flagged = {name: flags for name, flags in flagged.items() if flags}
        if flagged:
            detail = "; ".join(f"{name}: {', '.join(flags)}" for name, flags in flagged.items())
            mark(row, REJECTED, stage, CAPTION_QUALITY, detail)
