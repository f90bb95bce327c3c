"""Input enumeration (driver) and reading (workers) for image folders, webdataset tars and parquet files.

``plan_inputs`` only lists files: it turns the user's URIs into small JSON-serializable "read units" that
Ray tasks can read independently. ``iter_unit`` / ``read_unit`` open one unit and emit one row per input
sample (``curation.records.new_row``). A sample that cannot be read becomes a REJECTED row (stage
``read``) instead of an exception, so every input is accounted for in the rejects.

Unit formats::

    {"kind": "folder", "root": ROOT_URI, "files": [[relpath, key, sidecar_relpath_or_None], ...]}
    {"kind": "tar", "uri": TAR_URI}
    {"kind": "parquet", "uri": PARQUET_URI}

URIs are plain absolute paths for local files and full ``protocol://`` URLs otherwise.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curation.config import ReaderConfig
from curation.io.keys import disambiguate, folder_keys, sanitize_key
from curation.records import REJECTED, Row, mark, new_row
from curation.stages.base import error_detail

log = logging.getLogger(__name__)

READ_STAGE = "read"
CAPTION_FIELDS = ("caption", "alt", "text", "prompt")
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
PARQUET_SUFFIXES = (".parquet",)
PARQUET_BATCH_ROWS = 64  # images can be megabytes each: keep decoded batches small
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext rule
_WDS_META = re.compile(r"__[^/]*__($|/)")


# --------------------------------------------------------------------------- planning (driver side)


def plan_inputs(uris: list[str], reader_config: ReaderConfig) -> list[dict[str, Any]]:
    """Read units for all input URIs, in the order given; each URI's units are sorted.

    A URI is a directory (searched recursively for images, ``.tar`` and ``.parquet`` files), a glob,
    or a single file. Hidden files and directories (``.name``) are skipped. A URI that matches
    nothing raises ``FileNotFoundError``.
    """
    units: list[dict[str, Any]] = []
    for uri in dict.fromkeys(uris):  # the same input given twice is read once
        units.extend(_plan_uri(uri, reader_config))
    _disambiguate_folder_keys(units)
    return units


def _disambiguate_folder_keys(units: list[dict[str, Any]]) -> None:
    """Two inputs with the same relative path (``a/x.jpg`` under two roots) would share a key: both colliding
    files get a hash of their full location instead. Keys of tar and parquet members are only known when
    read, so ``curate verify`` is what catches their cross-input collisions.
    """
    folder_files = [(unit["root"], entry) for unit in units if unit["kind"] == "folder" for entry in unit["files"]]
    roots_per_key: dict[str, set[str]] = {}
    for root, (_, key, _) in folder_files:
        roots_per_key.setdefault(key, set()).add(root)
    for root, entry in folder_files:
        if len(roots_per_key[entry[1]]) > 1:
            entry[1] = disambiguate(entry[1], f"{root}/{entry[0]}")


def _plan_uri(uri: str, config: ReaderConfig) -> list[dict[str, Any]]:
    fs, path = fsspec.core.url_to_fs(uri)
    path = path.rstrip("/") or "/"
    if _has_glob(path):
        root, files, listed = _glob_static_root(path), _expand_glob(fs, path), False
        if not files:
            raise FileNotFoundError(f"input {uri!r} matches no file")
    elif fs.isdir(path):
        root, files, listed = path, sorted(fs.find(path)), True
    elif fs.isfile(path):
        root, files, listed = posixpath.dirname(path), [path], False
    else:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    units = _units_for_files(fs, root, files, listed, config)
    if not units and fs.isfile(path):
        raise ValueError(f"input {uri!r} is not an image ({', '.join(config.extensions)}), .tar or .parquet file")
    if not units:
        log.warning("input %s holds no image, .tar or .parquet file", uri)
    return units


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _glob_static_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard component."""
    parts = pattern.split("/")
    first_wildcard = next(i for i, part in enumerate(parts) if _has_glob(part))
    return "/".join(parts[:first_wildcard]) or "/"


def _expand_glob(fs: fsspec.AbstractFileSystem, pattern: str) -> list[str]:
    files: list[str] = []
    for match in fs.glob(pattern):
        files.extend(fs.find(match) if fs.isdir(match) else [match])
    return sorted(set(files))


def _units_for_files(
    fs: fsspec.AbstractFileSystem, root: str, files: list[str], listed: bool, config: ReaderConfig
) -> list[dict[str, Any]]:
    image_exts = {ext.lower() for ext in config.extensions}
    visible = [path for path in files if not _is_hidden(_relative(path, root))]
    units = [{"kind": "tar", "uri": _to_uri(fs, p)} for p in visible if p.lower().endswith(TAR_SUFFIXES)]
    units += [{"kind": "parquet", "uri": _to_uri(fs, p)} for p in visible if p.lower().endswith(PARQUET_SUFFIXES)]
    images = [path for path in visible if posixpath.splitext(path)[1].lower() in image_exts]
    if images:
        units += _folder_units(fs, root, images, set(files) if listed else None, config.files_per_task)
    return units


def _folder_units(
    fs: fsspec.AbstractFileSystem, root: str, images: list[str], known: set[str] | None, per_task: int
) -> list[dict[str, Any]]:
    """``known`` is the full listing when there is one; otherwise sidecars are probed one by one."""
    relpaths = sorted(_relative(path, root) for path in images)
    keys = folder_keys(relpaths)
    files = [[rel, keys[rel], _find_sidecar(fs, root, rel, known)] for rel in relpaths]
    root_uri = _to_uri(fs, root)
    return [
        {"kind": "folder", "root": root_uri, "files": files[start : start + per_task]}
        for start in range(0, len(files), per_task)
    ]


def _find_sidecar(fs: fsspec.AbstractFileSystem, root: str, relpath: str, known: set[str] | None) -> str | None:
    stem = posixpath.splitext(relpath)[0]
    for ext in (".txt", ".json"):
        candidate = _join(root, stem + ext)
        if (candidate in known) if known is not None else fs.isfile(candidate):
            return stem + ext
    return None


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root != "/" else path.lstrip("/")


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _join(root: str, relpath: str) -> str:
    return f"{root.rstrip('/')}/{relpath}"


# --------------------------------------------------------------------------- reading (worker side)


def read_unit(unit: dict[str, Any], reader_config: ReaderConfig) -> list[Row]:
    """All rows of one read unit (see the module docstring for unit formats)."""
    return list(iter_unit(unit, reader_config))


def iter_unit(unit: dict[str, Any], reader_config: ReaderConfig) -> Iterator[Row]:
    """Rows of one read unit, one at a time (a tar or parquet file is never held whole in memory)."""
    readers = {"folder": _iter_folder, "tar": _iter_tar, "parquet": _iter_parquet}
    if unit.get("kind") not in readers:
        raise ValueError(f"unknown read unit kind {unit.get('kind')!r}")
    return readers[unit["kind"]](unit, reader_config)


def _rejected(key: str, source: str, reason: str, detail: str) -> Row:
    return mark(new_row(key, source, None), REJECTED, READ_STAGE, reason, detail)


def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def caption_from_text(data: bytes) -> str | None:
    text = data.decode("utf-8", errors="replace").strip()
    return text or None


def caption_from_json(data: bytes) -> str | None:
    """The first non-empty ``caption`` / ``alt`` / ``text`` / ``prompt`` string of a JSON object."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    for field in CAPTION_FIELDS:
        text = value.get(field)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def _iter_folder(unit: dict[str, Any], config: ReaderConfig) -> Iterator[Row]:
    root = unit["root"]
    for relpath, key, sidecar in unit["files"]:
        yield _read_folder_file(root, relpath, key, sidecar)


def _read_folder_file(root: str, relpath: str, key: str, sidecar: str | None) -> Row:
    source = _join(root, relpath)
    try:
        image = _read_bytes(source)
    except Exception as error:  # any fsspec backend error: the sample is unreadable, the job goes on
        return _rejected(key, source, "unreadable", error_detail(error))
    return new_row(key, source, image, _read_sidecar(_join(root, sidecar)) if sidecar else None)


def _read_sidecar(uri: str) -> str | None:
    try:
        data = _read_bytes(uri)
    except Exception as error:  # a missing caption is not worth losing the image for
        log.warning("cannot read caption sidecar %s: %s", uri, error_detail(error))
        return None
    return caption_from_json(data) if uri.lower().endswith(".json") else caption_from_text(data)


# ------------------------------------------------------------------ webdataset tars


def split_wds_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): webdataset's key/extension split."""
    match = _WDS_NAME.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _iter_tar(unit: dict[str, Any], config: ReaderConfig) -> Iterator[Row]:
    uri = unit["uri"]
    image_exts = [ext.lower().lstrip(".") for ext in config.extensions]
    problem = None
    try:
        with fsspec.open(uri, "rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
            members, problem = _list_members(tar)
            for wds_key, by_ext in _group_by_wds_key(members).items():
                yield _tar_sample_row(tar, uri, wds_key, by_ext, image_exts)
    except Exception as error:  # unreadable or truncated archive: account for the part we lost
        problem = error_detail(error)
    if problem:
        yield _rejected(sanitize_key(f"{uri}#unreadable"), uri, "unreadable_tar", problem)


def _list_members(tar: tarfile.TarFile) -> tuple[list[tarfile.TarInfo], str | None]:
    """Every member header that can be read, and the error that ended the listing early, if any."""
    members = []
    try:
        while (member := tar.next()) is not None:
            members.append(member)
    except (tarfile.TarError, OSError, EOFError) as error:
        return members, error_detail(error)
    return members, None


def _group_by_wds_key(members: list[tarfile.TarInfo]) -> dict[str, dict[str, tarfile.TarInfo]]:
    """Members per webdataset key, in order of first appearance, even when a sample is not contiguous."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in members:
        parsed = split_wds_name(member.name)
        if not member.isreg() or parsed is None or _WDS_META.match(member.name):
            continue
        wds_key, ext = parsed
        groups.setdefault(wds_key, {}).setdefault(ext, member)
    return groups


def _tar_sample_row(
    tar: tarfile.TarFile, uri: str, wds_key: str, by_ext: dict[str, tarfile.TarInfo], image_exts: list[str]
) -> Row:
    key = sanitize_key(wds_key)
    image_ext = next((ext for ext in image_exts if ext in by_ext), None)
    if image_ext is None:
        return _rejected(key, f"{uri}#{wds_key}", "no_image", f"sample members: {', '.join(sorted(by_ext))}")
    source = f"{uri}#{by_ext[image_ext].name}"
    try:
        image = _extract(tar, by_ext[image_ext])
        alt = _tar_caption(tar, by_ext)
    except Exception as error:  # truncated or corrupt member data
        return _rejected(key, source, "unreadable_tar", error_detail(error))
    return new_row(key, source, image, alt)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise tarfile.ReadError(f"{member.name} is not a regular file")
    return handle.read()


def _tar_caption(tar: tarfile.TarFile, by_ext: dict[str, tarfile.TarInfo]) -> str | None:
    if "txt" in by_ext:
        return caption_from_text(_extract(tar, by_ext["txt"]))
    if "json" in by_ext:
        return caption_from_json(_extract(tar, by_ext["json"]))
    return None


# ------------------------------------------------------------------ parquet


def _iter_parquet(unit: dict[str, Any], config: ReaderConfig) -> Iterator[Row]:
    uri = unit["uri"]
    problem = None
    try:
        with fsspec.open(uri, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            columns = _parquet_columns(parquet.schema_arrow.names, config)
            index = 0
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                for record in batch.to_pylist():
                    yield _parquet_row(record, index, uri, config)
                    index += 1
    except Exception as error:  # corrupt file or missing columns: one reject row stands for the rest
        problem = error_detail(error)
    if problem:
        yield _rejected(sanitize_key(f"{uri}#unreadable"), uri, "unreadable", problem)


def _parquet_columns(available: list[str], config: ReaderConfig) -> list[str]:
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


def _parquet_key(record: dict[str, Any], index: int, uri: str, config: ReaderConfig) -> str:
    value = record.get(config.key_column) if config.key_column else None
    if value is None:
        stem = posixpath.basename(uri).split(".")[0]
        return sanitize_key(f"{stem}_{index:08d}")
    return sanitize_key(str(value))


def _parquet_row(record: dict[str, Any], index: int, uri: str, config: ReaderConfig) -> Row:
    key = _parquet_key(record, index, uri, config)
    caption = record.get(config.caption_column) if config.caption_column else None
    alt = caption.strip() or None if isinstance(caption, str) else None
    value, image_path = _image_value(record, config)
    if value is not None:
        return new_row(key, f"{uri}#{index}", value, alt)
    if not image_path:
        return _rejected(key, f"{uri}#{index}", "no_image", "empty image and path")
    source = _resolve_relative(image_path, uri)
    try:
        return new_row(key, source, _read_bytes(source), alt)
    except Exception as error:  # any fsspec backend error: the sample is unreadable
        return _rejected(key, source, "unreadable", error_detail(error))


def _image_value(record: dict[str, Any], config: ReaderConfig) -> tuple[bytes | None, str | None]:
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
    return _join(posixpath.dirname(parquet_uri), path)
