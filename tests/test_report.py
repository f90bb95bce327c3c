"""write_report: a self-contained page with counts, reject examples, buckets, caption stats, thumbnails."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from ray.data._internal.execution.interfaces import TaskContext

from curation.io.layout import npy_bytes
from curation.io.writer import ShardSink, finalize
from curation.records import FAILED, REJECTED, Row, mark, new_row, rows_to_table
from curation.report import MAX_THUMBNAILS, THUMBNAIL_SIDE, write_report


def ok_row(key: str, words: int, bucket: str = "1.0", truncated: bool = False) -> Row:
    buffer = io.BytesIO()
    Image.new("RGB", (600, 400), (90, 160, 60)).save(buffer, format="JPEG")
    image = buffer.getvalue()
    caption = " ".join(["word"] * words)
    row = new_row(key, f"file:///in/{key}.jpg", image)
    row.update(
        image_ext="jpg", width=600, height=400, sha256=hashlib.sha256(image).hexdigest(), phash="0" * 16,
        filter_notes="{}", bucket=bucket, bucket_h=64, bucket_w=64, captions=json.dumps({"dense": caption}),
        caption_status=json.dumps({"dense": "ok"}),
        t5=npy_bytes(np.zeros((words + 1, 4), np.float16)), t5_tokens=words + 1,
        t5_truncated=truncated, vae=npy_bytes(np.zeros((8, 8, 8), np.float16)),
    )  # fmt: skip
    return row


def build_dataset(path: Path, rows: list[Row]) -> Path:
    ShardSink(str(path), 10, "run1").write([rows_to_table(rows)], TaskContext(task_idx=0, op_name="Write"))
    finalize(str(path), {"fingerprint": "fp123", "started_at": "2026-01-01T00:00:00+00:00"})
    return path


def reject(key: str, status: str, reason: str, detail: str) -> Row:
    return mark(new_row(key, f"s3://bucket/in.tar#{key}.jpg", b"x"), status, "filter", reason, detail)


def test_report_sections(tmp_path: Path) -> None:
    rows = [ok_row(f"img_{i}", words=3 + i, bucket="0.5" if i < 2 else "1.0", truncated=i == 0) for i in range(4)]
    rows += [
        reject("tiny_a", REJECTED, "too_small", "<script>alert(1)</script>"),
        reject("tiny_b", REJECTED, "too_small", ""),
    ]
    rows += [reject("crash", FAILED, "error", "RuntimeError: boom")]
    path = write_report(str(build_dataset(tmp_path / "ds", rows)))

    assert path == tmp_path / "ds" / "report" / "index.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "fp123" in page
    assert re.search(r"<td>written</td><td class=\"num\">4</td>", page)
    assert re.search(r"<td>input</td><td class=\"num\">7</td>", page)
    assert "too_small" in page and "tiny_a" in page and "s3://bucket/in.tar#tiny_a.jpg" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "RuntimeError: boom" in page
    assert re.search(r"<td>0.5</td><td class=\"num\">2</td>", page)
    assert re.search(r"<td>caption words</td><td class=\"num\">3</td><td class=\"num\">4.5</td>", page)
    assert "truncated to the T5 length: <b>1</b> of 4" in page
    assert page.count("data:image/jpeg;base64,") == 4
    assert "word word word word word word" in page  # img_3's caption under its thumbnail


def test_thumbnails_are_small_and_capped(tmp_path: Path) -> None:
    rows = [ok_row(f"img_{i:02d}", words=2) for i in range(MAX_THUMBNAILS + 6)]
    page = write_report(str(build_dataset(tmp_path / "ds", rows))).read_text()

    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == MAX_THUMBNAILS
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == THUMBNAIL_SIDE


def test_report_of_an_unfinished_build(tmp_path: Path) -> None:
    path = build_dataset(tmp_path / "ds", [ok_row("img_0", words=2)])
    (path / "manifest.json").unlink()
    page = write_report(str(path)).read_text()
    assert "manifest.json is missing" in page and page.count("data:image/jpeg;base64,") == 1
