"""Dataset layout helpers: tar grouping (with and without an extension filter), .npy bytes, no Ray import."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from curation.io.layout import iter_tar_samples, load_npy, npy_bytes


def tar_bytes(members: list[tuple[str, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


MEMBERS = [
    ("a.jpg", b"A-image"),
    ("a.txt", b"A-text"),
    ("a.t5.npy", b"A-t5"),
    ("b.jpg", b"B-image"),  # no wanted member when filtering for txt / t5.npy
    ("c.txt", b"C-text"),
    ("a.txt", b"A-again"),  # a key reappearing after another key is a second group
]


def test_groups_members_by_key_in_tar_order() -> None:
    assert list(iter_tar_samples(tar_bytes(MEMBERS))) == [
        ("a", {"jpg": b"A-image", "txt": b"A-text", "t5.npy": b"A-t5"}),
        ("b", {"jpg": b"B-image"}),
        ("c", {"txt": b"C-text"}),
        ("a", {"txt": b"A-again"}),
    ]


def test_extension_filter_reads_only_wanted_members() -> None:
    assert list(iter_tar_samples(tar_bytes(MEMBERS), extensions=("txt", "t5.npy"))) == [
        ("a", {"txt": b"A-text", "t5.npy": b"A-t5"}),
        ("c", {"txt": b"C-text"}),
        ("a", {"txt": b"A-again"}),
    ]


def test_npy_bytes_round_trip_and_refuse_pickles() -> None:
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    loaded = load_npy(npy_bytes(array))
    assert loaded.dtype == np.float16 and np.array_equal(loaded, array)
    with pytest.raises(ValueError):
        npy_bytes(np.array([{"a": 1}], dtype=object))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_npy(pickled.getvalue())


def test_dataset_readers_do_not_import_ray() -> None:
    modules = "curation.io.layout, curation.pixart.loader, curation.verify, curation.report, curation.pixart.export"
    code = f"import sys, {modules}; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
