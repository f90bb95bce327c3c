"""The row that travels between pipeline stages, and its status vocabulary.

Every stage receives and returns rows with exactly these columns, so Ray Data blocks always share one
Arrow schema (blocks whose nullable columns happened to be all-null would otherwise disagree).
Images travel as encoded bytes; arrays (T5 features, VAE moments) travel as ``.npy`` bytes. Pixels prepared
on CPUs for a model stage travel as raw uint8 HWC bytes plus their shape (``*_pixels`` / ``*_shape``) and are
dropped by the stage that consumes them, so a row only carries what is still ahead of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
        ("error_trace", pa.string()),  # FAILED by an exception: its traceback (to _run/errors-*.jsonl only)
        ("thumbnail", pa.binary()),  # REJECTED, decodable: small JPEG for the report (curation.thumbnails)
        ("width", pa.int32()),  # stored image, upright
        ("height", pa.int32()),
        ("sha256", pa.string()),  # of the original input bytes
        ("phash", pa.string()),
        ("filter_notes", pa.string()),  # JSON: what the filter changed (exif transpose, mode conversion)
        ("filter_values", pa.string()),  # JSON {name: number}: what the filter rules measured on a kept image
        ("scores", pa.string()),  # JSON {name: float}: model scores (aesthetic, nsfw, watermark, clip_similarity)
        ("bucket", pa.string()),
        ("bucket_h", pa.int32()),
        ("bucket_w", pa.int32()),
        ("captions", pa.string()),  # JSON {name: text}; the primary caption is under "dense"
        ("caption_status", pa.string()),  # JSON {name: ok | truncated | empty | error}
        ("caption_tokens", pa.string()),  # JSON {name: generated tokens}
        ("caption_flags", pa.string()),  # JSON {name: [flag, ...]} (curation.caption_quality.FLAGS)
        ("t5", pa.binary()),  # .npy float16 [t5_tokens, D]
        ("t5_tokens", pa.int32()),
        ("t5_truncated", pa.bool_()),
        ("t5_extra", pa.binary()),  # .npz {caption name: float16 [tokens, D]} for the non-primary captions
        ("caption_t5_tokens", pa.string()),  # JSON {name: tokens} for every encoded caption
        ("caption_t5_truncated", pa.string()),  # JSON {name: bool}
        ("vae", pa.binary()),  # .npy float16 [8, h/8, w/8]
        # Prepared model inputs (uint8 HWC bytes + [h, w, 3]), made once from one decode on CPUs:
        ("vae_pixels", pa.binary()),  # the bucket crop (resize-to-cover + centre crop)
        ("vae_shape", pa.list_(pa.int32())),
        ("caption_pixels", pa.binary()),  # the image shrunk to caption.max_image_side
        ("caption_shape", pa.list_(pa.int32())),
        ("scorer_pixels", pa.binary()),  # a small view for the model scorers
        ("scorer_shape", pa.list_(pa.int32())),
    ]
)
PIXEL_INPUTS = ("vae", "caption", "scorer")
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
    row["t5_extra"] = None
    for name in PIXEL_INPUTS:
        drop_pixels(row, name)
    return row


def put_pixels(row: Row, name: str, pixels: np.ndarray) -> None:
    """Store a prepared uint8 HWC array for the stage ``name`` (one of ``PIXEL_INPUTS``)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"{name} pixels must be uint8 HWC, got {pixels.dtype} {pixels.shape}")
    row[f"{name}_pixels"] = np.ascontiguousarray(pixels).tobytes()
    row[f"{name}_shape"] = list(pixels.shape)


def get_pixels(row: Row, name: str) -> np.ndarray:
    """The prepared uint8 HWC array for ``name`` (read-only view of the row's bytes)."""
    data, shape = row.get(f"{name}_pixels"), row.get(f"{name}_shape")
    if data is None or shape is None:
        raise ValueError(f"row {row.get('key')!r} carries no prepared {name} pixels (the filter stage makes them)")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def drop_pixels(row: Row, name: str) -> None:
    row[f"{name}_pixels"] = None
    row[f"{name}_shape"] = None


def is_ok(row: Row) -> bool:
    return row["status"] == OK


def rows_to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=ROW_SCHEMA)


def table_to_rows(table: pa.Table) -> list[Row]:
    return table.to_pylist()
