"""Dataset keys: stable, collision-free ``[A-Za-z0-9_-]`` names derived from where a sample came from.

A key is never random: the same source id always gives the same key, so re-runs resume and the
writer, index and exports agree. When sanitizing loses information, a short hash of the original id
is appended so that two different ids can never end up with the same key.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter

MAX_KEY_LENGTH = 150
_HASH_LENGTH = 8
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:_HASH_LENGTH]


def _clean(source_id: str) -> str:
    return _UNSAFE_RUN.sub("_", source_id).strip("_")


def _with_hash(cleaned: str, hashed_id: str) -> str:
    digest = short_hash(hashed_id)
    if not cleaned:
        return digest
    return f"{cleaned[: MAX_KEY_LENGTH - _HASH_LENGTH - 1]}-{digest}"


def sanitize_key(source_id: str) -> str:
    """``source_id`` itself when it is already a short safe key, else its cleaned form + ``-`` + sha1[:8]."""
    cleaned = _clean(source_id)
    if cleaned and cleaned == source_id and len(cleaned) <= MAX_KEY_LENGTH:
        return cleaned
    return _with_hash(cleaned, source_id)


def folder_keys(relative_paths: list[str]) -> dict[str, str]:
    """Key per image path (relative to its input root), from the path without its extension.

    Paths that share a stem (``a.jpg`` and ``a.png``) both get a hash of their full relative path,
    so neither key depends on which of the two happens to be listed first.
    """
    stems = {path: posixpath.splitext(path)[0] for path in relative_paths}
    stem_counts = Counter(stems.values())
    keys = {}
    for path, stem in stems.items():
        keys[path] = _with_hash(_clean(stem), path) if stem_counts[stem] > 1 else sanitize_key(stem)
    return keys


def disambiguate(key: str, source_id: str) -> str:
    """``key`` made unique by a hash of where it came from (for keys that collide across inputs)."""
    return _with_hash(key, source_id)
