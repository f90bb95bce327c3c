"""Dataset keys: ``[A-Za-z0-9_-]`` names derived only from the input they name.

A key never depends on which other inputs exist, so adding an input never re-keys a written sample:

- folder file: its path relative to the input root, extension included (``path_key``). A path made of
  letter/digit runs joined by single ``_``, ``-`` or ``.`` within names and ``/`` between them maps
  one-to-one to a readable key: ``.`` becomes ``__``, ``/`` becomes ``--`` (``sub/IMG_01.jpg`` ->
  ``sub--IMG_01__jpg``). Any other path (spaces, non-ASCII, ``__``, leading dots...) gets its cleaned
  form plus ``_-`` and a hash of the raw path.
- tar sample: the tar's stem, ``_``, the webdataset key (``shard-000001.tar`` + ``000123`` ->
  ``shard-000001_000123``), each part through ``sanitize_key``.
- parquet row: the file's stem, ``_``, the row index on 8 digits (``part-0.parquet`` row 5 ->
  ``part-0_00000005``), or the ``key_column`` value through ``sanitize_key``.

``sanitize_key`` keeps an id that already is a key (``[A-Za-z0-9][A-Za-z0-9_-]*`` without ``_-``) and
turns any other into cleaned text + ``_-`` + hash. Unhashed keys never contain ``_-``, so a hashed key
cannot equal an unhashed one; keys longer than ``MAX_KEY_LENGTH`` are cut and hashed the same way.
Within one input root, one tar or one parquet file (without ``key_column``) keys are therefore
distinct. Collisions between inputs (the same relative path under two roots, two tars or parquet files
with the same stem, repeated ``key_column`` values) cannot be seen by a local rule: the pipeline
detects them over the whole run and rejects later occurrences as ``duplicate_key``.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

MAX_KEY_LENGTH = 150
HASH_LENGTH = 16  # 64 bits: millions of paths that clean to the same text (non-ASCII names) stay distinct
HASH_MARK = "_-"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".parquet")
DUPLICATE_KEY = "duplicate_key"  # the reject reason of a later input whose key another input already has

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:HASH_LENGTH]


def _hashed(cleaned: str, raw_id: str) -> str:
    cleaned = cleaned.strip("_-") or "key"
    return f"{cleaned[: MAX_KEY_LENGTH - HASH_LENGTH - len(HASH_MARK)]}{HASH_MARK}{short_hash(raw_id)}"


def _bounded(key: str, raw_id: str) -> str:
    """``key`` when it is short enough, else its prefix + hash of ``raw_id``."""
    return key if len(key) <= MAX_KEY_LENGTH else _hashed(key, raw_id)


def sanitize_key(source_id: str) -> str:
    """``source_id`` itself when it already is a short key without ``_-``, else cleaned text + ``_-`` + hash."""
    if _SAFE_ID.fullmatch(source_id) and HASH_MARK not in source_id and len(source_id) <= MAX_KEY_LENGTH:
        return source_id
    return _hashed(_UNSAFE_RUN.sub("_", source_id), source_id)


def _encode_separators(path: str) -> str:
    return path.replace(".", "__").replace("/", "--")


def path_key(relative_path: str) -> str:
    """Key of a folder file from its path relative to the input root (extension included)."""
    if _PLAIN_PATH.fullmatch(relative_path):
        return _bounded(_encode_separators(relative_path), relative_path)
    return _hashed(_UNSAFE_RUN.sub("_", _encode_separators(relative_path)), relative_path)


def archive_stem(path_or_uri: str) -> str:
    """File name without directory and ``.tar`` / ``.tgz`` / ``.tar.gz`` / ``.parquet`` suffix."""
    name = posixpath.basename(path_or_uri.rstrip("/"))
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def archive_key(path_or_uri: str) -> str:
    """Key of a tar or parquet file as a whole (its rows that stand for the file, e.g. unreadable)."""
    return sanitize_key(archive_stem(path_or_uri))


def tar_sample_key(tar_uri: str, wds_key: str) -> str:
    """``<tar stem>_<webdataset key>``: samples of two shards that reuse keys stay apart."""
    raw_id = f"{archive_stem(tar_uri)}/{wds_key}"
    return _bounded(f"{archive_key(tar_uri)}_{sanitize_key(wds_key)}", raw_id)


def parquet_row_key(parquet_uri: str, index: int) -> str:
    """``<parquet stem>_<row index, 8 digits>``."""
    raw_id = f"{archive_stem(parquet_uri)}/{index}"
    return _bounded(f"{archive_key(parquet_uri)}_{index:08d}", raw_id)


def column_key(value: object) -> str:
    """Key from a parquet ``key_column`` value, as given (sanitized)."""
    return sanitize_key(str(value))
