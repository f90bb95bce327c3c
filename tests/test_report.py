"""write_report: a static page with every section, thumbnails of rejects and duplicates, charts, and "no data"."""

from __future__ import annotations

import base64
import io
import re
import statistics
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.io.layout import read_rejects
from curation.report import MAX_THUMBNAILS, SECTION_IDS, THUMBNAIL_SIDE, write_report
from curation.thumbnails import THUMBNAIL_SIDE as REJECT_SIDE
from curation.thumbnails import make_thumbnail, reject_thumbnail
from tests.report_helpers import DUPLICATE_IMAGE, NSFW_IMAGE, SMALL_IMAGE, build_dataset, full_dataset, ok_row, reject


def uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def section_html(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"section {anchor} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = full_dataset(tmp_path_factory.mktemp("report") / "ds")
    return path, Path(write_report(str(path))).read_text()


def test_every_section_is_present_and_the_page_is_self_contained(full):
    path, page = full
    assert (path / "report" / "index.html").is_file()
    assert page.startswith("<!DOCTYPE html>")
    for anchor in SECTION_IDS:
        assert "no data" not in section_html(page, anchor), anchor
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a red &lt;b&gt;barn&lt;/b&gt;" in page


def test_summary_has_counts_duration_models_fingerprint_and_ray(full):
    summary = section_html(full[1], "summary")
    for row in (("input", 10), ("written", 4), ("rejected", 5), ("failed", 1)):
        assert re.search(rf'<td>{row[0]}</td><td class="num">{row[1]}</td>', summary), row
    assert "<td>duration</td><td>2 min 5 s</td>" in summary and "fp123" in summary
    assert "ray://head:10001" in summary and "org/vae" in summary and "abc123" in summary


def test_funnel_shows_each_reason_with_thumbnails_and_a_placeholder_for_nsfw(full):
    path, page = full
    funnel = section_html(page, "funnel")
    for stage, reason in [("filter", "too_small"), ("scorers", "nsfw"), ("dedup", "duplicate"), ("vae", "error")]:
        assert re.search(rf"<td>{stage}</td><td>{reason}</td><td class=\"num\">1</td>", funnel), reason
    assert uri(make_thumbnail(SMALL_IMAGE)) in funnel
    assert "nsfw: not shown" in funnel and uri(make_thumbnail(NSFW_IMAGE)) not in page
    thumbnails = dict(zip(*read_rejects(str(path), ["key", "thumbnail"]).to_pydict().values(), strict=True))
    assert thumbnails["unsafe"] is None and thumbnails["broken"] is None  # nsfw: never stored; undecodable: none
    with Image.open(io.BytesIO(thumbnails["tiny_a"])) as small:
        assert small.format == "JPEG" and max(small.size) <= REJECT_SIDE
    assert "after dedup" in funnel and ">4<" in funnel  # survivors chart ends with the 4 written


def test_duplicate_group_shows_the_kept_sample_and_the_dropped_copies(full):
    duplicates = section_html(full[1], "duplicates")
    assert "2 duplicate(s) removed in 1 group(s)" in duplicates and "kept: img_0" in duplicates
    assert duplicates.count('class="kept"') == 1 and duplicates.count('class="dropped"') == 2
    assert duplicates.count(uri(make_thumbnail(DUPLICATE_IMAGE))) == 2
    assert "near_duplicate: copy_2 (hamming 3)" in duplicates


def test_buckets_captions_flags_scores_stages_and_gallery(full):
    page = full[1]
    assert ">0.5 (h/w)<" in section_html(page, "buckets")
    captions = section_html(page, "captions")
    dense_words, short_words = [3, 4, 5, 8], [2, 5, 3, 4]
    for name, words in (("dense", dense_words), ("short", short_words)):
        tokens = [w + 1 for w in words]
        row = f'<td>T5 tokens</td><td class="num">4</td><td class="num">{min(tokens)}</td>'
        row += f'<td class="num">{statistics.median(tokens):.4g}</td>'
        assert row in captions, name
    assert "T5 max 300" in captions and "Truncated to the T5 length: <b>1</b> of 4" in captions
    assert '<td>repetition</td><td class="num">1</td><td>25.0%</td>' in section_html(page, "flags")
    scores = section_html(page, "scores")
    assert "<h3>aesthetic</h3>" in scores and "min 5" in scores and "From the index" in scores
    stages = section_html(page, "stages")
    assert '<td>caption</td><td class="num">4</td>' in stages and '<td class="num">12.25</td>' in stages
    gallery = section_html(page, "gallery")
    assert gallery.count("<figure>") == 4 and "aesthetic 9" in gallery and "brief brief brief" in gallery


def test_gallery_thumbnails_are_small_and_capped(tmp_path: Path):
    rows = [ok_row(f"img_{i:02d}", words=2) for i in range(MAX_THUMBNAILS + 6)]
    page = Path(write_report(str(build_dataset(tmp_path / "ds", rows)))).read_text()
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', section_html(page, "gallery"))
    assert len(uris) == MAX_THUMBNAILS
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == THUMBNAIL_SIDE


def test_a_dataset_from_before_these_features_says_no_data(tmp_path: Path):
    """An old layout: no manifest, rejects without a thumbnail column, no scores, no flags, no stages."""
    path = build_dataset(tmp_path / "ds", [ok_row("img_0", 2), reject("gone", "filter", "too_small", "", SMALL_IMAGE)])
    (path / "manifest.json").unlink()
    rejects = next((path / "rejects").glob("*.parquet"))
    pq.write_table(pq.read_table(rejects).drop_columns(["thumbnail"]), rejects)
    page = Path(write_report(str(path))).read_text()
    assert "manifest.json is missing" in section_html(page, "summary")
    for anchor in ("duplicates", "scores", "stages", "flags"):
        assert "no data" in section_html(page, anchor), anchor
    assert "no picture" in section_html(page, "funnel") and section_html(page, "gallery").count("<figure>") == 1


def png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of a PNG claiming ``width`` x ``height`` (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_reject_thumbnails_are_upright_small_and_never_of_nsfw():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° to view: 200x100 stored, 100x200 upright
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (30, 60, 90)).save(buffer, format="JPEG", exif=exif)
    with Image.open(io.BytesIO(make_thumbnail(buffer.getvalue()))) as small:
        assert small.size == (REJECT_SIDE // 2, REJECT_SIDE)
    assert make_thumbnail(b"not an image") is None and make_thumbnail(None) is None
    assert make_thumbnail(png_header(9000, 9000)) is None  # a bomb-sized header is never decoded
    assert reject_thumbnail(SMALL_IMAGE, ["aesthetic", "nsfw"]) is None
    assert reject_thumbnail(SMALL_IMAGE, "too_small") == make_thumbnail(SMALL_IMAGE)
    assert reject_thumbnail(SMALL_IMAGE, "file_size") is None  # too large to decode: not even tried
