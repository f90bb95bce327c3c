"""What every reader shares: the rows it emits for inputs it cannot pass on, reason codes, capped reads,
and captions from sidecar text/JSON.

Outcomes of the read stage: a REJECTED row when the input itself is unusable (the reasons below), a
FAILED row (reason ``read_error``) when it could not be read this time; FAILED rows are retried on the
next run.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from curation.io.retry import is_read_failure
from curation.records import FAILED, REJECTED, Row, mark, new_row
from curation.stages.base import error_detail

READ_STAGE = "read"

NOT_AN_IMAGE = "not_an_image"  # a file/sample/row holding no image candidate (orphan sidecar, caption-only sample)
FILE_SIZE = "file_size"  # bytes over the configured maximum: never read into memory
UNSAFE_MEMBER = "unsafe_member"  # tar sample with an absolute or ``..`` name, a link, device or fifo member
UNREADABLE_TAR = "unreadable_tar"  # corrupt or truncated tar data
UNREADABLE_PARQUET = "unreadable_parquet"  # corrupt parquet data or missing configured columns
MISSING_FILE = "missing_file"  # a parquet path column names a file that does not exist
UNREADABLE = "unreadable"  # a parquet path column names a file that cannot be read for good
READ_ERROR = "read_error"  # FAILED: I/O error or timeout that outlasted the retries
READ_REJECT_REASONS = (
    NOT_AN_IMAGE,
    FILE_SIZE,
    UNSAFE_MEMBER,
    UNREADABLE_TAR,
    UNREADABLE_PARQUET,
    MISSING_FILE,
    UNREADABLE,
)

DEFAULT_MAX_BYTES = 100 * 2**20
CAPTION_FIELDS = ("caption", "alt", "text", "prompt")


class TooLarge(Exception):
    """An input over the byte limit; ``detail`` states the size measured."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def size_detail(size: int | None, max_bytes: int, what: str = "") -> str:
    measured = f"{size} bytes" if size is not None else "more bytes"
    return f"{what}{measured} > max {max_bytes}"


def rejected(key: str, source: str, reason: str, detail: str) -> Row:
    return mark(new_row(key, source, None), REJECTED, READ_STAGE, reason, detail)


def failed(key: str, source: str, detail: str) -> Row:
    return mark(new_row(key, source, None), FAILED, READ_STAGE, READ_ERROR, detail)


def error_row(key: str, source: str, error: Exception, reason: str) -> Row:
    """FAILED when ``error`` is about access (may work next run), else REJECTED with ``reason``."""
    if isinstance(error, TooLarge):
        return rejected(key, source, FILE_SIZE, error.detail)
    if is_read_failure(error):
        return failed(key, source, error_detail(error))
    return rejected(key, source, reason, error_detail(error))


def read_capped(fs: fsspec.AbstractFileSystem, path: str, max_bytes: int, what: str = "") -> bytes:
    """The file's bytes; ``TooLarge`` (after reading at most ``max_bytes`` + 1 bytes) when it is bigger."""
    with fs.open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        try:
            size = int(fs.size(path))
        except Exception:  # the size is only for the message
            size = None
        raise TooLarge(size_detail(size, max_bytes, what))
    return data


def caption_from_text(data: bytes) -> str | None:
    text = data.decode("utf-8", errors="replace").strip()
    return text or None


def caption_from_json(data: bytes) -> str | None:
    """The first non-empty ``caption`` / ``alt`` / ``text`` / ``prompt`` string of a JSON object."""
    try:
        value: Any = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    for name in CAPTION_FIELDS:
        text = value.get(name)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def caption_from_sidecar(name: str, data: bytes) -> str | None:
    return caption_from_json(data) if name.lower().endswith(".json") else caption_from_text(data)
