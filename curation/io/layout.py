"""The layout of a built dataset, and how to read it back: no Ray, so every reader imports it cheaply.

Under the dataset dir (local path or any fsspec URL, e.g. ``s3://bucket/ds``)::

    shards/{run_id}-{task:05d}-{n:04d}.tar   samples (KEY.jpg|png|webp, KEY.json, KEY.txt, KEY.t5.npy, KEY.vae.npy)
    index/{run_id}-{task:05d}-{n:04d}.parquet one row per sample of the shard of the same stem
    rejects/{run_id}-{task:05d}.parquet       rejected and failed rows of one write task
    _run/state.json                           fingerprint of the run in progress
    manifest.json                             written last by ``finalize``: its presence means "complete"

Every file is written under a temporary name in its final directory and renamed when complete, or, on
object stores, uploaded under its final name and published whole by the upload's last request
(``atomic_write``). ``curation.io.writer`` writes this layout; readers (verify, report, the PixArt
loader and exporter) need only this module.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import uuid
from collections.abc import Callable, Collection, Iterator
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from curation.config import SCORE_NAMES

SHARDS_DIR, INDEX_DIR, REJECTS_DIR, RUN_DIR, REPORT_DIR = "shards", "index", "rejects", "_run", "report"
MANIFEST = "manifest.json"
STATE = f"{RUN_DIR}/state.json"
TMP_PREFIX = ".tmp-"
IMAGE_EXTS = ("jpg", "png", "webp")
MANIFEST_FORMAT = 1

# What the filter measured on each kept image: ``filter_values`` {name: number} in KEY.json, index columns
# ``filter_<name>`` (curation.stages.filter_checks explains each measure).
FILTER_VALUE_TYPES = {
    "file_bytes": pa.int64(),  # size of the input
    "pixels": pa.int64(),  # width * height of the input (before a downscale to filter.max_train_pixels)
    "min_side": pa.int32(),
    "aspect_ratio": pa.float64(),  # max(w/h, h/w)
    "frames": pa.int32(),
    "transparent_fraction": pa.float64(),  # 1 - mean(alpha)/255; 0 without alpha
    "gray_std": pa.float64(),  # blank rule
    "laplacian_var": pa.float64(),  # blurry rule
    "chroma": pa.int32(),  # grayscale rule
}

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),  # tar file name under shards/
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bucket", pa.string()),
        ("bucket_h", pa.int32()),
        ("bucket_w", pa.int32()),
        ("caption", pa.string()),  # the primary (dense) caption
        ("t5_tokens", pa.int32()),
        ("t5_truncated", pa.bool_()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("source", pa.string()),
        ("caption_flags", pa.string()),  # JSON {caption name: [flag, ...]}
        *((f"filter_{name}", kind) for name, kind in FILTER_VALUE_TYPES.items()),
        *((f"score_{name}", pa.float64()) for name in SCORE_NAMES),
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        *((name, pa.string()) for name in ("key", "source", "stage", "reason", "detail", "status")),
        ("thumbnail", pa.binary()),  # optional small JPEG of a decodable rejected input (never for nsfw), or null
    ]
)


# ---------------------------------------------------------------- filesystem helpers


def filesystem(output_dir: str) -> tuple[AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(output_dir)
    return fs, root.rstrip("/")


def list_names(fs: AbstractFileSystem, directory: str, suffix: str = "") -> list[str]:
    """Sorted file names in ``directory`` ending with ``suffix``, temp files excluded; [] if absent."""
    try:
        paths = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    names = (posixpath.basename(p.rstrip("/")) for p in paths)
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith(TMP_PREFIX))


# Object stores whose upload appears whole or not at all (a PUT, a multipart upload once completed) and
# where a rename is a copy + delete. Others (GCS, Azure) keep temp + rename until tested here.
DIRECT_UPLOAD_PROTOCOLS = frozenset({"s3", "s3a"})


def writes_directly(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return bool(DIRECT_UPLOAD_PROTOCOLS.intersection(protocols))


def atomic_write(fs: AbstractFileSystem, path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that readers see all of it or nothing.

    On an object store (``writes_directly``) the final key is uploaded directly and published by one
    last request once ``write`` has returned: nothing is visible before, and a failure or a crash
    (kill -9 included) leaves no object behind (an unfinished multipart upload is invisible, and
    aborted on failure). Elsewhere ``write`` runs on a temp file next to ``path``, renamed to ``path``.
    """
    if writes_directly(fs):
        _upload_then_publish(fs, path, write)
        return
    directory, name = posixpath.split(path)
    fs.makedirs(directory, exist_ok=True)
    temp = posixpath.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with fs.open(temp, "wb") as file:
            write(file)
        fs.mv(temp, path)
    except BaseException:
        if fs.exists(temp):
            fs.rm(temp)
        raise


def _upload_then_publish(fs: AbstractFileSystem, path: str, write: Callable[[IO[bytes]], None]) -> None:
    # autocommit=False: fsspec's transactional files upload every byte at close() but publish the
    # object only at commit(); discard() aborts the upload.
    file = fs.open(path, "wb", autocommit=False)
    try:
        write(file)
        file.close()
    except BaseException:
        file.discard()
        file.closed = True  # discarded: nothing left to flush when the object is collected
        raise
    file.commit()


def write_json(fs: AbstractFileSystem, path: str, data: dict[str, Any]) -> None:
    payload = json.dumps(data, indent=2, ensure_ascii=False, default=str).encode("utf-8")
    atomic_write(fs, path, lambda file: file.write(payload))


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as file:
        return json.load(file)


# ---------------------------------------------------------------- reading the layout back


def read_manifest(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
    manifest = read_json(fs, f"{root}/{MANIFEST}")
    if manifest is None:  # finalize writes it last: without it the build is incomplete
        raise FileNotFoundError(f"{root}/{MANIFEST} not found: not a finished curated dataset")
    return manifest


def _read_dir_table(output_dir: str, subdir: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    fs, root = filesystem(output_dir)
    names = list_names(fs, f"{root}/{subdir}", ".parquet")
    wanted = columns or schema.names
    tables = [_read_columns(fs, f"{root}/{subdir}/{name}", wanted, schema) for name in names]
    if not tables:
        return pa.schema([schema.field(name) for name in wanted]).empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def _read_columns(fs: AbstractFileSystem, path: str, wanted: list[str], schema: pa.Schema) -> pa.Table:
    """The wanted columns of one file; columns added to the layout after the file was written read as nulls."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        present = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[name for name in wanted if name in present])
    for name in wanted:
        if name not in present:
            kind = schema.field(name).type if name in schema.names else pa.null()
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    return table.select(wanted)


def read_index(output_dir: str, columns: list[str] | None = None) -> pa.Table:
    return _read_dir_table(output_dir, INDEX_DIR, INDEX_SCHEMA, columns)


def read_rejects(output_dir: str, columns: list[str] | None = None) -> pa.Table:
    return _read_dir_table(output_dir, REJECTS_DIR, REJECTS_SCHEMA, columns)


def iter_tar_samples(
    file: IO[bytes], extensions: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {extension: bytes})`` groups in tar order, like webdataset's grouping.

    A key that reappears after another key yields a second group (the caller can flag it).
    With ``extensions``, only those members are read (the others are skipped unread, but still
    delimit groups); a key with none of them yields nothing.
    """
    key, members = None, {}
    with tarfile.open(fileobj=file, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = posixpath.basename(info.name)
            member_key, _, extension = base.partition(".")
            if member_key != key and members:
                yield key, members
                members = {}
            key = member_key
            if extensions is None or extension in extensions:
                members[extension] = tar.extractfile(info).read()
    if members:
        yield key, members


# ---------------------------------------------------------------- .npy members


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` file contents, never a pickle."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Uncompressed ``.npz`` contents of named arrays (never pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def load_npy(data: bytes) -> np.ndarray:
    """An array from ``.npy`` bytes; a pickled (object) array is refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)
