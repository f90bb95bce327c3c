"""Parquet files: one row per parquet row, read in small batches.

The image is a bytes column, a Hugging Face ``{"bytes", "path"}`` struct column, or a path column
(relative paths resolve from the parquet file's directory). The row count comes from the footer, so
every row is accounted for even when the data cannot be read: missing columns or corrupt data reject
each remaining row (``unreadable_parquet``), transient errors that outlast the retries fail them.
A transient error mid-file reopens the file at the row where it broke.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from curation.config import ReaderConfig
from curation.io.keys import archive_key, column_key, parquet_row_key
from curation.io.read_rows import (
    FILE_SIZE,
    MISSING_FILE,
    NOT_AN_IMAGE,
    UNREADABLE,
    UNREADABLE_PARQUET,
    error_row,
    read_capped,
    rejected,
    size_detail,
)
from curation.io.retry import Retrier, is_read_failure, resumable
from curation.records import Row, new_row
from curation.stages.base import error_detail

PARQUET_BATCH_ROWS = 64  # images can be megabytes each: keep decoded batches small


class CorruptParquetError(ValueError):
    """Arrow could not decode the file (pyarrow reports some of that as OSError, like an I/O error)."""


class _RecordingHandle:
    """A file handle for pyarrow that remembers the errors it raised itself: any other OSError out of
    pyarrow comes from decoding (corrupt data), not from reading.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.raised: list[BaseException] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._handle, name)
        if not callable(attribute):
            return attribute

        def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except Exception as error:
                self.raised.append(error)
                raise

        return recorded


@contextlib.contextmanager
def _open_parquet(uri: str) -> Iterator[pq.ParquetFile]:
    """The parquet file at ``uri``; decoding errors come out as ``CorruptParquetError``."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as raw:
        handle = _RecordingHandle(raw)
        try:
            yield pq.ParquetFile(handle)
        except OSError as error:
            if any(error is raised for raised in handle.raised):
                raise
            raise CorruptParquetError(error_detail(error)) from error


@dataclass(frozen=True)
class ParquetLayout:
    columns: list[str]  # all columns of the file
    row_group_starts: list[int]  # index of each row group's first row
    num_rows: int

    def row_group_end(self, row: int) -> int:
        """Index after the last row of the row group that holds ``row``."""
        group = bisect.bisect_right(self.row_group_starts, row)
        return self.row_group_starts[group] if group < len(self.row_group_starts) else self.num_rows


def read_layout(uri: str) -> ParquetLayout:
    with _open_parquet(uri) as parquet:
        metadata = parquet.metadata
    sizes = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
    starts = [0, *itertools.accumulate(sizes)][:-1]
    return ParquetLayout(list(metadata.schema.to_arrow_schema().names), starts, metadata.num_rows)


def wanted_columns(available: list[str], config: ReaderConfig) -> list[str]:
    """Columns to read; raises ValueError naming what is missing."""
    if config.image_column in available:
        columns = [config.image_column]
    elif config.path_column and config.path_column in available:
        columns = [config.path_column]
    else:
        wanted = f"image column {config.image_column!r}" + (
            f" or path column {config.path_column!r}" if config.path_column else ""
        )
        raise ValueError(f"parquet has no {wanted} (columns: {', '.join(available)})")
    for optional in (config.key_column, config.caption_column):
        if optional and optional not in available:
            raise ValueError(f"parquet has no configured column {optional!r} (columns: {', '.join(available)})")
        if optional:
            columns.append(optional)
    return columns


def records_from(uri: str, columns: list[str], layout: ParquetLayout, start: int) -> Iterator[dict[str, Any]]:
    """Records from row ``start`` on, reading only the row groups from the one that holds it."""
    if start >= layout.num_rows:
        return
    group = bisect.bisect_right(layout.row_group_starts, start) - 1
    to_skip = start - layout.row_group_starts[group]
    with _open_parquet(uri) as parquet:
        for row_group in range(group, len(layout.row_group_starts)):  # one at a time: bounded memory
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[row_group], columns=columns):
                if to_skip >= batch.num_rows:
                    to_skip -= batch.num_rows
                    continue
                yield from batch.slice(to_skip).to_pylist()
                to_skip = 0


def iter_parquet(unit: dict[str, Any], config: ReaderConfig, max_bytes: int, retrier: Retrier) -> Iterator[Row]:
    uri = unit["uri"]
    try:
        layout = retrier.call(lambda: read_layout(uri))
    except Exception as error:  # not a parquet file, or its footer cannot be read now
        yield error_row(archive_key(uri), uri, error, UNREADABLE_PARQUET)
        return
    try:
        columns = wanted_columns(layout.columns, config)
    except ValueError as error:
        yield from _unread_rows(uri, range(layout.num_rows), error, config)
        return
    index = 0
    while index < layout.num_rows:
        try:
            for record in resumable(lambda start: records_from(uri, columns, layout, start), retrier, index):
                yield _parquet_row(record, index, uri, config, max_bytes, retrier)
                index += 1
        except Exception as error:
            # corrupt data rejects the rest of its row group, then reading goes on; an outage that outlasted
            # the retries fails every remaining row
            end = layout.num_rows if is_read_failure(error) else layout.row_group_end(index)
            yield from _unread_rows(uri, range(index, end), error, config)
            index = end


def _unread_rows(uri: str, indices: range, error: Exception, config: ReaderConfig) -> Iterator[Row]:
    note = f" (key column {config.key_column!r} not read: positional key)" if config.key_column else ""
    for index in indices:
        row = error_row(parquet_row_key(uri, index), f"{uri}#{index}", error, UNREADABLE_PARQUET)
        row["detail"] = (row["detail"] + note)[:2000]
        yield row


def _parquet_row(
    record: dict[str, Any], index: int, uri: str, config: ReaderConfig, max_bytes: int, retrier: Retrier
) -> Row:
    key_value = record.get(config.key_column) if config.key_column else None
    key = column_key(key_value) if key_value is not None else parquet_row_key(uri, index)
    caption = record.get(config.caption_column) if config.caption_column else None
    alt = (caption.strip() or None) if isinstance(caption, str) else None
    value, image_path = _image_value(record, config)
    if value is not None:
        if not isinstance(value, bytes):
            return rejected(key, f"{uri}#{index}", NOT_AN_IMAGE, f"image cell holds {type(value).__name__}")
        if len(value) > max_bytes:
            return rejected(key, f"{uri}#{index}", FILE_SIZE, size_detail(len(value), max_bytes))
        return new_row(key, f"{uri}#{index}", value, alt)
    if not image_path:
        return rejected(key, f"{uri}#{index}", NOT_AN_IMAGE, "empty image and path cells")
    source = _resolve_relative(image_path, uri)
    try:
        fs, path = fsspec.core.url_to_fs(source)
        return new_row(key, source, retrier.call(lambda: read_capped(fs, path, max_bytes)), alt)
    except FileNotFoundError as error:  # a dangling reference in the data: final, unlike a listed file
        return rejected(key, source, MISSING_FILE, str(error) or source)
    except Exception as error:
        return error_row(key, source, error, UNREADABLE)


def _image_value(record: dict[str, Any], config: ReaderConfig) -> tuple[Any, str | None]:
    """Image bytes if the row carries them, else the path to read them from."""
    if config.image_column in record:
        value = record[config.image_column]
        if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
            return value.get("bytes"), value.get("path")
        if isinstance(value, str):  # a column of paths under the image column's name
            return None, value
        return value, None
    return None, record.get(config.path_column)


def _resolve_relative(path: str, parquet_uri: str) -> str:
    """Absolute paths and URLs as they are; relative paths from the parquet file's directory."""
    if "://" in path or path.startswith("/"):
        return path
    return f"{posixpath.dirname(parquet_uri).rstrip('/')}/{path}"
