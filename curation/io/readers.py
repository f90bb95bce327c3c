"""Input enumeration (driver) and reading (workers) for folders, webdataset tars and parquet files.

What counts as an input: every non-hidden file under a folder input that is neither a tar/parquet file
nor a consumed sidecar, every sample of a tar, every row of a parquet file. Each input becomes exactly
one row: OK (bytes to the filter, which recognises images by content), REJECTED (stage ``read``, reason
in ``curation.io.read_rows``) or FAILED (``read_error``: retried next run). A sidecar ``NAME.txt`` /
``NAME.json`` beside an input file ``NAME.*`` is consumed by it (its caption becomes ``alt``) and counted
apart; a sidecar with no such file is an input of its own, rejected as ``not_an_image``. Hidden files
(any ``.name`` path part) are not inputs. ``reader.extensions``, when set, is an allow-list for folder
files (tars and parquet files are always read): files it leaves out are counted, not read.

``plan_inputs`` only lists files: it returns an ``InputPlan`` whose ``units`` are small JSON-serializable
dicts that Ray tasks read independently with ``iter_unit``::

    {"kind": "folder", "root": ROOT_URI, "files": [FILE, ...], "unit_id": ID}
        FILE = {"path": RELPATH, "key": KEY, "sidecar": RELPATH | None}
             | {"path": RELPATH, "key": KEY, "orphan": true}
    {"kind": "tar", "uri": TAR_URI, "unit_id": ID}
    {"kind": "parquet", "uri": PARQUET_URI, "unit_id": ID}

``unit_id`` is a hash of the rest of the unit: the same unit in another run has the same id.
URIs are plain absolute paths for local files and full ``protocol://`` URLs otherwise. Keys follow
``curation.io.keys``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from curation.config import ReaderConfig
from curation.io.keys import path_key
from curation.io.parquet_reader import PARQUET_BATCH_ROWS, iter_parquet
from curation.io.read_rows import (
    DEFAULT_MAX_BYTES,
    FILE_SIZE,
    NOT_AN_IMAGE,
    READ_STAGE,
    TooLarge,
    caption_from_json,
    caption_from_sidecar,
    caption_from_text,
    failed,
    read_capped,
    rejected,
)
from curation.io.retry import Retrier, RetryPolicy
from curation.io.tar_reader import iter_tar, pillow_image_extensions, split_wds_name
from curation.records import Row, new_row
from curation.stages.base import error_detail

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
PARQUET_SUFFIXES = (".parquet",)
SIDECAR_EXTENSIONS = (".txt", ".json")  # preference order for the caption

__all__ = [
    "PARQUET_BATCH_ROWS",
    "READ_STAGE",
    "InputPlan",
    "caption_from_json",
    "caption_from_text",
    "iter_unit",
    "plan_inputs",
    "read_unit",
    "split_wds_name",
]


@dataclass
class InputPlan:
    """Read units plus what the listing saw but will not emit as rows (for the manifest)."""

    units: list[dict[str, Any]] = field(default_factory=list)
    sidecars: int = 0  # NAME.txt / NAME.json files consumed by an input file NAME.*
    skipped_by_extension: int = 0  # folder files left out by the ``reader.extensions`` allow-list
    hidden: int = 0  # files under a ``.name`` path part

    def counts(self) -> dict[str, int]:
        return {"sidecars": self.sidecars, "skipped_by_extension": self.skipped_by_extension, "hidden": self.hidden}


# --------------------------------------------------------------------------- planning (driver side)


def plan_inputs(uris: list[str], reader_config: ReaderConfig) -> InputPlan:
    """Read units for all input URIs, in the order given; each URI's units are sorted.

    A URI is a directory (searched recursively), a glob, or a single file. A file reached through two
    URIs is read once (under the first). A URI that matches nothing raises ``FileNotFoundError``.
    """
    plan = InputPlan()
    seen: set[str] = set()
    for uri in uris:
        _plan_uri(uri, reader_config, plan, seen)
    for unit in plan.units:
        unit["unit_id"] = unit_id(unit)
    return plan


def unit_id(unit: dict[str, Any]) -> str:
    """Stable id of a read unit: a hash of its content (``unit_id`` itself excluded)."""
    content = {name: value for name, value in unit.items() if name != "unit_id"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _plan_uri(uri: str, config: ReaderConfig, plan: InputPlan, seen: set[str]) -> None:
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
    units_before = len(plan.units)
    _plan_files(fs, root, [f for f in files if _to_uri(fs, f) not in seen], listed, config, plan)
    seen.update(_to_uri(fs, f) for f in files)
    if len(plan.units) == units_before:
        log.warning("input %s holds no file to read", uri)


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


def _plan_files(
    fs: fsspec.AbstractFileSystem, root: str, files: list[str], listed: bool, config: ReaderConfig, plan: InputPlan
) -> None:
    relpaths = [_relative(path, root) for path in files]
    visible = [rel for rel in relpaths if not _is_hidden(rel)]
    plan.hidden += len(relpaths) - len(visible)
    tars = [rel for rel in visible if rel.lower().endswith(TAR_SUFFIXES)]
    parquets = [rel for rel in visible if rel.lower().endswith(PARQUET_SUFFIXES)]
    plan.units += [{"kind": "tar", "uri": _to_uri(fs, _join(root, rel))} for rel in tars]
    plan.units += [{"kind": "parquet", "uri": _to_uri(fs, _join(root, rel))} for rel in parquets]
    archives = set(tars) | set(parquets)
    entries = _folder_entries(fs, root, [rel for rel in visible if rel not in archives], listed, config, plan)
    root_uri = _to_uri(fs, root)
    per_task = config.files_per_task
    plan.units += [
        {"kind": "folder", "root": root_uri, "files": entries[start : start + per_task]}
        for start in range(0, len(entries), per_task)
    ]


def _extension(relpath: str) -> str:
    return posixpath.splitext(relpath)[1].lower()


def allow_list(config: ReaderConfig) -> set[str] | None:
    """Lower-case extensions with a dot, or None when every file is read."""
    if not config.extensions:
        return None
    return {"." + ext.lower().lstrip(".") for ext in config.extensions}


def _folder_entries(
    fs: fsspec.AbstractFileSystem,
    root: str,
    relpaths: list[str],
    listed: bool,
    config: ReaderConfig,
    plan: InputPlan,
) -> list[dict[str, Any]]:
    """One entry per input file (sorted by path); consumed sidecars and allow-list skips are counted."""
    allowed = allow_list(config)
    is_allowed = (lambda rel: True) if allowed is None else (lambda rel: _extension(rel) in allowed)
    sidecar_like = [rel for rel in relpaths if _extension(rel) in SIDECAR_EXTENSIONS]
    others = [rel for rel in relpaths if _extension(rel) not in SIDECAR_EXTENSIONS]
    inputs = [rel for rel in others if is_allowed(rel)]
    plan.skipped_by_extension += len(others) - len(inputs)
    sidecars_of = _sidecars_by_stem(fs, root, inputs, sidecar_like, listed)
    consumed = {sidecar for found in sidecars_of.values() for sidecar in found}
    plan.sidecars += len(consumed)
    entries = [
        {"path": rel, "key": path_key(rel), "sidecar": next(iter(sidecars_of.get(_stem(rel), [])), None)}
        for rel in inputs
    ]
    for rel in sidecar_like:
        if rel in consumed:
            continue
        if is_allowed(rel):
            entries.append({"path": rel, "key": path_key(rel), "orphan": True})
        else:
            plan.skipped_by_extension += 1
    return sorted(entries, key=lambda entry: entry["path"])


def _stem(relpath: str) -> str:
    return posixpath.splitext(relpath)[0]


def _sidecars_by_stem(
    fs: fsspec.AbstractFileSystem, root: str, inputs: list[str], sidecar_like: list[str], listed: bool
) -> dict[str, list[str]]:
    """Sidecars of each input stem, ``.txt`` first. Without a full listing (glob, single file) the usual
    ``STEM.txt`` / ``STEM.json`` names beside each input are probed.
    """
    stems = {_stem(rel) for rel in inputs}
    found: dict[str, list[str]] = {}
    for rel in sidecar_like:
        if _stem(rel) in stems:
            found.setdefault(_stem(rel), []).append(rel)
    if not listed:
        for stem in sorted(stems - set(found)):
            probed = [stem + ext for ext in SIDECAR_EXTENSIONS if fs.isfile(_join(root, stem + ext))]
            if probed:
                found[stem] = probed
    order = {ext: rank for rank, ext in enumerate(SIDECAR_EXTENSIONS)}
    return {stem: sorted(rels, key=lambda rel: (order[_extension(rel)], rel)) for stem, rels in found.items()}


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root != "/" else path.lstrip("/")


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return path if "file" in protocols else fs.unstrip_protocol(path)


def _join(root: str, relpath: str) -> str:
    return f"{root.rstrip('/')}/{relpath}"


# --------------------------------------------------------------------------- reading (worker side)


def read_unit(
    unit: dict[str, Any],
    reader_config: ReaderConfig,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retry: RetryPolicy | None = None,
) -> list[Row]:
    """All rows of one read unit (see the module docstring for unit formats)."""
    return list(iter_unit(unit, reader_config, max_bytes, retry))


def iter_unit(
    unit: dict[str, Any],
    reader_config: ReaderConfig,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retry: RetryPolicy | None = None,
) -> Iterator[Row]:
    """Rows of one read unit, one per input, one at a time (a tar or parquet file is never held whole).

    Inputs over ``max_bytes`` are rejected (``file_size``) without being read; transient read errors
    are retried with ``retry`` (default ``RetryPolicy()``) before the row is FAILED.
    """
    retrier = Retrier(retry or RetryPolicy())
    kind = unit.get("kind")
    if kind == "folder":
        return _iter_folder(unit, max_bytes, retrier)
    if kind == "tar":
        return iter_tar(unit, tar_image_extensions(reader_config), max_bytes, retrier)
    if kind == "parquet":
        return iter_parquet(unit, reader_config, max_bytes, retrier)
    raise ValueError(f"unknown read unit kind {kind!r}")


def tar_image_extensions(config: ReaderConfig) -> tuple[str, ...]:
    """Tar member extensions taken as the image, by preference: the allow-list, else all Pillow opens."""
    if not config.extensions:
        return pillow_image_extensions()
    return tuple(dict.fromkeys(ext.lower().lstrip(".") for ext in config.extensions))


def _iter_folder(unit: dict[str, Any], max_bytes: int, retrier: Retrier) -> Iterator[Row]:
    fs, root = fsspec.core.url_to_fs(unit["root"])
    for entry in unit["files"]:
        yield _read_folder_entry(fs, root, unit["root"], entry, max_bytes, retrier)


def _read_folder_entry(
    fs: fsspec.AbstractFileSystem, root: str, root_uri: str, entry: dict[str, Any], max_bytes: int, retrier: Retrier
) -> Row:
    key, relpath = entry["key"], entry["path"]
    source = _join(root_uri, relpath)
    if entry.get("orphan"):
        kind = "JSON" if _extension(relpath) == ".json" else "text"
        detail = f"{kind} file with no file of the same name beside it (a sidecar caption needs its image)"
        return rejected(key, source, NOT_AN_IMAGE, detail)
    sidecar = entry.get("sidecar")
    try:
        image = retrier.call(lambda: read_capped(fs, _join(root, relpath), max_bytes))
        sidecar_data = (
            retrier.call(lambda: read_capped(fs, _join(root, sidecar), max_bytes, f"sidecar {sidecar}: "))
            if sidecar
            else None
        )
    except TooLarge as error:
        return rejected(key, source, FILE_SIZE, error.detail)
    except Exception as error:  # a listed file that cannot be read now (gone, I/O error): next run tries again
        return failed(key, source, error_detail(error))
    alt = caption_from_sidecar(sidecar, sidecar_data) if sidecar_data is not None else None
    return new_row(key, source, image, alt)
