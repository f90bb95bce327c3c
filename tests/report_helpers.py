"""Small datasets written through the real ``ShardSink`` and ``finalize`` (no Ray run), for the report tests."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray.data._internal.execution.interfaces import TaskContext

from curation.io.layout import npy_bytes, npz_bytes
from curation.io.writer import ShardSink, finalize
from curation.records import FAILED, REJECTED, Row, mark, new_row, rows_to_table
from curation.thumbnails import make_thumbnail

T5_DIM = 4


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (600, 400)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def ok_row(
    key: str,
    words: int,
    bucket: str = "1.0",
    truncated: bool = False,
    short_words: int | None = None,
    scores: dict[str, float] | None = None,
    flags: dict[str, list[str]] | None = None,
    color: tuple[int, int, int] = (90, 160, 60),
    alt: str | None = None,
) -> Row:
    image = jpeg(color)
    captions = {"dense": " ".join(["word"] * words)}
    t5_tokens = {"dense": words + 1}
    if short_words is not None:
        captions["short"] = " ".join(["brief"] * short_words)
        t5_tokens["short"] = short_words + 1
    if alt is not None:
        captions["alt"] = alt
    row = new_row(key, f"file:///in/{key}.jpg", image, alt)
    row.update(
        image_ext="jpg", width=600, height=400, sha256=hashlib.sha256(image).hexdigest(), phash="0" * 16,
        filter_notes="{}", bucket=bucket, bucket_h=64, bucket_w=96, captions=json.dumps(captions),
        caption_status=json.dumps(dict.fromkeys(captions, "ok")), caption_flags=json.dumps(flags or {}),
        caption_t5_tokens=json.dumps(t5_tokens), scores=json.dumps(scores) if scores else None,
        t5=npy_bytes(np.zeros((words + 1, T5_DIM), np.float16)), t5_tokens=words + 1, t5_truncated=truncated,
        vae=npy_bytes(np.zeros((8, 8, 12), np.float16)),
    )  # fmt: skip
    if short_words is not None:
        row["t5_extra"] = npz_bytes({"short": np.zeros((short_words + 1, T5_DIM), np.float16)})
    return row


def reject(key: str, stage: str, reason: str, detail: str, image: bytes | None = None, status: str = REJECTED) -> Row:
    """A rejected (or failed) row as a stage leaves it; a decodable ``image`` gets its thumbnail first."""
    row = new_row(key, f"s3://bucket/in.tar#{key}.jpg", image or b"x")
    row["thumbnail"] = make_thumbnail(image) if image else None
    return mark(row, status, stage, reason, detail)


def build_dataset(path: Path, rows: list[Row], samples_per_shard: int = 10, **manifest: Any) -> Path:
    sink = ShardSink(str(path), samples_per_shard, "run1")
    sink.write([rows_to_table(rows)], TaskContext(task_idx=0, op_name="Write"))
    finalize(str(path), {"fingerprint": "fp123", "started_at": "2026-01-01T00:00:00+00:00", **manifest})
    return path


STAGES = {
    "filter": {"rows_in": 9, "rows_out": {"ok": 5, "rejected": 1}, "workers": 2, "seconds": 1.5, "rows_per_s": 6.0},
    "caption": {"rows_in": 4, "rows_out": {"ok": 4}, "workers": 1, "seconds": 12.25, "model_seconds": 11.5},
}
CONFIG = {
    "flavor": "sigma",
    "caption": {"jobs": {"dense": {}, "short": {}}},
    "t5": {"max_length": 300},
    "scorers": {"aesthetic": {"min": 5.0, "max": None}},
}
MODELS = {"vae": {"path": "org/vae", "subfolders": ["vae"], "revision": "abc123", "device": "cpu", "dtype": "float32"}}
DUPLICATE_IMAGE, NSFW_IMAGE, SMALL_IMAGE = jpeg((10, 20, 200)), jpeg((250, 0, 0)), jpeg((0, 0, 0), (90, 60))


def full_dataset(path: Path) -> Path:
    """Every report section has data: kept samples with two captions, alt, scores and flags; rejects of the filter
    (decodable and not), an nsfw reject, two duplicates of img_0, a failure; stages, models, Ray address."""
    kept = [
        ok_row("img_0", 3, "0.5", True, 2, {"aesthetic": 6.0}, {"dense": ["repetition"]}, alt="a red <b>barn</b>"),
        ok_row("img_1", 4, "0.5", False, 5, {"aesthetic": 7.5}, color=(200, 200, 20)),
        ok_row("img_2", 5, "1.0", False, 3, {"aesthetic": 5.5}, {"short": ["too_short"]}),
        ok_row("img_3", 8, "1.0", False, 4, {"aesthetic": 9.0}),
    ]
    rejected = [
        reject("tiny_a", "filter", "too_small", "<script>alert(1)</script>", SMALL_IMAGE),
        reject("broken", "filter", "not_an_image", "not a recognised image format"),
        reject("unsafe", "scorers", "nsfw", "nsfw 0.99 > max 0.5", NSFW_IMAGE),
        reject("copy_1", "dedup", "duplicate", "img_0 (same sha256)", DUPLICATE_IMAGE),
        reject("copy_2", "dedup", "near_duplicate", "img_0 (hamming 3)", DUPLICATE_IMAGE),
        reject("crash", "vae", "error", "RuntimeError: boom", status=FAILED),
    ]
    path = build_dataset(
        path, kept + rejected, samples_per_shard=2,
        stages=STAGES, config=CONFIG, models=MODELS, ray={"address": "ray://head:10001"},
        finished_at="2026-01-01T00:02:05+00:00", run_id="run1",
    )  # fmt: skip
    return path
