"""A mixed input tree (folder files of every kind, tars reusing webdataset keys, unsafe tar members, a
parquet with repeated key values) read end to end: every input is exactly one row with the expected key,
status and reason, and every listed file is an input, a consumed sidecar, an allow-list skip or hidden."""

import random
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.io.keys import sanitize_key
from curation.io.readers import plan_inputs
from curation.records import OK, REJECTED
from tests.io.read_helpers import image_bytes, read_all, reader_config, regular, special, tar_bytes, write, write_tar

MAX_BYTES = 4096
FOLDER_INPUTS = [
    "photo.jpg", "png_as.jpg", "jpeg_as.png", "README.txt", "notes.json", "manual.pdf", "blob.bin", "scan.tiff",
    "sub/nested.webp", "big.png",
]  # fmt: skip
CONSUMED_SIDECARS = ["photo.txt", "scan.json"]
HIDDEN = [".DS_Store", ".cache/x.jpg"]
UNSAFE_SAMPLES = ["../x", "/abs", "link", "hard", "pipe", "dev"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    files = root / "files"
    write(files / "photo.jpg", image_bytes(fmt="JPEG"))
    write(files / "photo.txt", "a photo")
    write(files / "png_as.jpg", image_bytes(fmt="PNG"))
    write(files / "jpeg_as.png", image_bytes(fmt="JPEG"))
    write(files / "README.txt", "how to use this folder")
    write(files / "notes.json", '{"caption": "orphan"}')
    write(files / "manual.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    write(files / "blob.bin", random.Random(0).randbytes(300))
    write(files / "scan.tiff", image_bytes(fmt="TIFF"))
    write(files / "scan.json", '{"caption": "a scan"}')
    write(files / "sub" / "nested.webp", image_bytes(fmt="WEBP"))
    write(files / "big.png", image_bytes(size=(64, 64)) + bytes(MAX_BYTES))
    write(files / ".DS_Store", b"\0\0\0\1Bud1")
    write(files / ".cache" / "x.jpg", image_bytes(fmt="JPEG"))
    for shard in ("shard-000000", "shard-000001"):
        members = [(f"{i:06d}.{ext}", f"{shard} {i}".encode()) for i in range(2) for ext in ("jpg", "txt")]
        write_tar(root / "shards" / f"{shard}.tar", members)
    good = image_bytes(fmt="JPEG")
    unsafe_members = [
        regular("../x.jpg", good),
        regular("/abs.jpg", good),
        special("link.jpg", tarfile.SYMTYPE, "/etc/shadow"),
        regular("000000.jpg", good),
        special("hard.jpg", tarfile.LNKTYPE, "000000.jpg"),
        special("pipe.jpg", tarfile.FIFOTYPE),
        special("dev.jpg", tarfile.CHRTYPE),
        regular("huge.jpg", bytes(MAX_BYTES + 1)),
    ]
    write(root / "shards" / "unsafe.tar", tar_bytes(unsafe_members))
    pq.write_table(pa.table({"image": [good, good, good], "id": ["a", "b", "a"]}), root / "table.parquet")
    return root


def expected_rows(root: Path) -> list[tuple[str, str, str | None, str]]:
    """(key, status, reason, source) of every input, written out by hand."""
    files, shards = root / "files", root / "shards"
    folder_keys = {
        "photo.jpg": "files--photo__jpg", "png_as.jpg": "files--png_as__jpg",
        "jpeg_as.png": "files--jpeg_as__png", "README.txt": "files--README__txt",
        "notes.json": "files--notes__json", "manual.pdf": "files--manual__pdf", "blob.bin": "files--blob__bin",
        "scan.tiff": "files--scan__tiff", "sub/nested.webp": "files--sub--nested__webp", "big.png": "files--big__png",
    }  # fmt: skip
    folder_reasons = {"README.txt": "not_an_image", "notes.json": "not_an_image", "big.png": "file_size"}
    rows = [
        (key, REJECTED if name in folder_reasons else OK, folder_reasons.get(name), f"{files}/{name}")
        for name, key in folder_keys.items()
    ]
    rows += [
        (f"{shard}_00000{i}", OK, None, f"{shards}/{shard}.tar#00000{i}.jpg")
        for shard in ("shard-000000", "shard-000001")
        for i in range(2)
    ]
    unsafe = f"{shards}/unsafe.tar"
    rows += [(f"unsafe_{sanitize_key(s)}", REJECTED, "unsafe_member", f"{unsafe}#{s}") for s in UNSAFE_SAMPLES]
    rows += [
        ("unsafe_000000", OK, None, f"{unsafe}#000000.jpg"),
        ("unsafe_huge", REJECTED, "file_size", f"{unsafe}#huge.jpg"),
    ]
    rows += [(key, OK, None, f"{root}/table.parquet#{i}") for i, key in enumerate(["a", "b", "a"])]
    return rows


def read_corpus(root: Path, **config):
    config = reader_config(key_column="id", **config)
    plan = plan_inputs([str(root)], config)
    return plan, read_all(plan.units, config, max_bytes=MAX_BYTES)


def summary(rows) -> list[tuple]:
    return sorted((row["key"], row["status"], row["reason"], row["source"]) for row in rows)


def test_every_input_is_exactly_one_row_with_the_expected_outcome(corpus):
    plan, rows = read_corpus(corpus)
    tar_samples, parquet_rows = 2 + 2 + len(UNSAFE_SAMPLES) + 2, 3
    assert len(rows) == len(FOLDER_INPUTS) + tar_samples + parquet_rows == 25
    assert len({row["source"] for row in rows}) == len(rows)
    assert summary(rows) == sorted(expected_rows(corpus))
    assert plan.counts() == {"sidecars": len(CONSUMED_SIDECARS), "skipped_by_extension": 0, "hidden": len(HIDDEN)}
    assert Counter(row["key"] for row in rows)["a"] == 2  # repeated key_column values: left to the global pass


def test_consumed_sidecars_become_captions_and_images_travel_as_their_bytes(corpus):
    _, rows = read_corpus(corpus)
    by_source = {row["source"]: row for row in rows}
    files = corpus / "files"
    assert by_source[f"{files}/photo.jpg"]["alt"] == "a photo"
    assert by_source[f"{files}/scan.tiff"]["alt"] == "a scan"
    assert by_source[f"{files}/png_as.jpg"]["image"] == (files / "png_as.jpg").read_bytes()
    assert by_source[f"{corpus}/shards/shard-000001.tar#000001.jpg"]["alt"] == "shard-000001 1"


def test_outcomes_do_not_depend_on_task_size(corpus):
    _, one_per_task = read_corpus(corpus, files_per_task=1)
    _, default = read_corpus(corpus)
    assert summary(one_per_task) == summary(default)


def test_with_an_allow_list_every_file_is_still_accounted_for(corpus):
    plan, rows = read_corpus(corpus, extensions=[".jpg", ".png"])
    folder_rows = sorted(row["source"].rsplit("/files/", 1)[1] for row in rows if "/files/" in row["source"])
    assert folder_rows == ["big.png", "jpeg_as.png", "photo.jpg", "png_as.jpg"]
    assert plan.counts() == {"sidecars": 1, "skipped_by_extension": 7, "hidden": 2}
    all_files = len(FOLDER_INPUTS) + len(CONSUMED_SIDECARS) + len(HIDDEN)
    assert len(folder_rows) + sum(plan.counts().values()) == all_files
