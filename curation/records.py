"""The row that travels between pipeline stages, and its status vocabulary.

Every stage receives and returns rows with exactly these columns, so Ray Data blocks always share one
Arrow schema (blocks whose nullable columns happened to be all-null would otherwise disagree).
Images travel as encoded bytes; arrays (T5 features, VAE moments) travel as ``.npy`` bytes.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

OK = "ok"
REJECTED = "rejected"  # the input is unusable or filtered out by a rule
FAILED = "failed"  # a stage raised on this sample; retried on the next run

ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("image", pa.binary()),  # encoded image bytes (original unless re-encoding was needed)
        ("image_ext", pa.string()),  # jpg | png | webp
        ("alt", pa.string()),  # caption that came with the input, if any
        ("status", pa.string()),
        ("stage", pa.string()),  # stage that rejected / failed the row
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("width", pa.int32()),  # stored image, upright
        ("height", pa.int32()),
        ("sha256", pa.string()),  # of the original input bytes
        ("phash", pa.string()),
        ("filter_notes", pa.string()),  # JSON: what the filter changed (exif transpose, mode conversion)
        ("bucket", pa.string()),
        ("bucket_h", pa.int32()),
        ("bucket_w", pa.int32()),
        ("captions", pa.string()),  # JSON {name: text}; the primary caption is under "dense"
        ("caption_status", pa.string()),
        ("t5", pa.binary()),  # .npy float16 [t5_tokens, D]
        ("t5_tokens", pa.int32()),
        ("t5_truncated", pa.bool_()),
        ("vae", pa.binary()),  # .npy float16 [8, h/8, w/8]
    ]
)
COLUMNS = tuple(ROW_SCHEMA.names)

Row = dict[str, Any]


def new_row(key: str, source: str, image: bytes | None, alt: str | None = None) -> Row:
    """A fresh row as a reader emits it."""
    row: Row = dict.fromkeys(COLUMNS)
    row.update(key=key, source=source, image=image, alt=alt, status=OK)
    return row


def mark(row: Row, status: str, stage: str, reason: str, detail: str = "") -> Row:
    """Take a row out of the flow (rejected or failed); its heavy payloads are dropped."""
    row.update(status=status, stage=stage, reason=reason, detail=detail[:2000], image=None, t5=None, vae=None)
    return row


def is_ok(row: Row) -> bool:
    return row["status"] == OK


def rows_to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=ROW_SCHEMA)


def table_to_rows(table: pa.Table) -> list[Row]:
    return table.to_pylist()
