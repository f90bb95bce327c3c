"""Webdataset tars: one row per sample (members grouped by webdataset key, contiguous or not).

A sample is every non-directory member sharing a webdataset key (``dir/000123.jpg`` and
``dir/000123.txt`` -> ``dir/000123``); a member whose name has no extension is a sample of its own.
``__key__``-style metadata members and directories are not samples. A sample with an absolute or
``..`` member name, a link, a device file or a fifo is one ``unsafe_member`` row; a sample without an
image member is ``not_an_image``; a member over the byte limit is ``file_size`` (its size comes from the
header, nothing is read). The header listing is retried as a whole on transient errors, each sample's
read reopens the archive and retries; truncated or corrupt data rejects what it hides
(``unreadable_tar``), and a listing cut short adds one row for the unknown rest.
"""

from __future__ import annotations

import functools
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from curation.io.keys import archive_key, tar_sample_key
from curation.io.read_rows import (
    FILE_SIZE,
    NOT_AN_IMAGE,
    UNREADABLE_TAR,
    UNSAFE_MEMBER,
    caption_from_sidecar,
    error_row,
    rejected,
    size_detail,
)
from curation.io.retry import Retrier, is_read_failure
from curation.records import Row, new_row
from curation.stages.base import error_detail

_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext rule
_WDS_META = re.compile(r"__[^/]*__($|/)")
PREFERRED_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")


@functools.cache
def pillow_image_extensions() -> tuple[str, ...]:
    """Member extensions taken as images when no allow-list is set: every extension Pillow can open."""
    from PIL import Image

    Image.init()
    openable = sorted(ext.lstrip(".") for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    return PREFERRED_IMAGE_EXTENSIONS + tuple(ext for ext in openable if ext not in PREFERRED_IMAGE_EXTENSIONS)


def split_wds_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): webdataset's key/extension split."""
    match = _WDS_NAME.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be used, or None for a regular file with a relative name."""
    if member.name.startswith("/"):
        return "absolute name"
    if ".." in member.name.split("/"):
        return "'..' in name"
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    if not member.isreg():
        return f"unsupported member type {member.type!r}"
    return None


@dataclass
class TarSample:
    wds_key: str
    members: list[tarfile.TarInfo] = field(default_factory=list)

    def first_by_extension(self) -> dict[str, tarfile.TarInfo]:
        by_ext: dict[str, tarfile.TarInfo] = {}
        for member in self.members:
            parsed = split_wds_name(member.name)
            by_ext.setdefault(parsed[1] if parsed else "", member)
        return by_ext


def group_samples(members: list[tarfile.TarInfo]) -> list[TarSample]:
    """Samples in order of first appearance; a name without extension is its own sample."""
    samples: dict[str, TarSample] = {}
    for member in members:
        if member.isdir() or (member.isreg() and _WDS_META.match(member.name)):
            continue
        parsed = split_wds_name(member.name)
        wds_key = parsed[0] if parsed else member.name
        samples.setdefault(wds_key, TarSample(wds_key)).members.append(member)
    return list(samples.values())


def open_tar(handle: Any, uri: str) -> tarfile.TarFile:
    """A tar reader on ``handle``; gzip by suffix (so that an I/O error is not taken for "not a gzip file"),
    else any compression tarfile detects.
    """
    mode = "r:gz" if uri.lower().endswith((".tar.gz", ".tgz")) else "r:*"
    try:
        return tarfile.open(fileobj=handle, mode=mode)
    except tarfile.TarError as error:
        raise _access_error_behind(error) from None


def _access_error_behind(error: Exception) -> Exception:
    """The I/O error that tarfile reported as bad data (``ReadError("not a gzip file") from OSError``), if any."""
    cause = error.__cause__
    return cause if isinstance(cause, Exception) and is_read_failure(cause) else error


class _Archive:
    """One open tar for reading member data; ``close`` makes the next read reopen it (after an error)."""

    def __init__(self, uri: str) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(uri)
        self._handle: Any = None
        self._tar: tarfile.TarFile | None = None

    def read(self, member: tarfile.TarInfo) -> bytes:
        if self._tar is None:
            self._handle = self.fs.open(self.path, "rb")
            self._tar = open_tar(self._handle, self.path)
        extracted = self._tar.extractfile(member)
        if extracted is None:
            raise tarfile.ReadError(f"{member.name} is not a regular file")
        return extracted.read()

    def close(self) -> None:
        for closable in (self._tar, self._handle):
            try:
                if closable is not None:
                    closable.close()
            except Exception:  # closing a broken stream must not hide the error being handled
                pass
        self._tar = self._handle = None


def list_members(uri: str) -> tuple[list[tarfile.TarInfo], str | None]:
    """Every member header that can be read, and why the listing ended early (corrupt data), if it did.

    Access errors propagate: the whole listing is retried, or the tar FAILED.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    members: list[tarfile.TarInfo] = []
    try:
        with fs.open(path, "rb") as handle, open_tar(handle, uri) as tar:
            while (member := tar.next()) is not None:
                members.append(member)
    except Exception as error:
        if is_read_failure(_access_error_behind(error)):
            raise _access_error_behind(error) from None
        return members, error_detail(error)
    return members, None


def iter_tar(
    unit: dict[str, Any], image_extensions: tuple[str, ...], max_bytes: int, retrier: Retrier
) -> Iterator[Row]:
    uri = unit["uri"]
    try:
        members, problem = retrier.call(lambda: list_members(uri))
    except Exception as error:  # the listing kept failing: the whole tar is tried again next run
        yield error_row(archive_key(uri), uri, error, UNREADABLE_TAR)
        return
    archive = _Archive(uri)
    try:
        for sample in group_samples(members):
            yield _sample_row(archive, uri, sample, image_extensions, max_bytes, retrier)
    finally:
        archive.close()
    if problem:
        yield rejected(archive_key(uri), uri, UNREADABLE_TAR, f"members after the last readable header: {problem}")


def _sample_row(
    archive: _Archive, uri: str, sample: TarSample, image_extensions: tuple[str, ...], max_bytes: int, retrier: Retrier
) -> Row:
    key = tar_sample_key(uri, sample.wds_key)
    unsafe = [f"{member.name}: {reason}" for member in sample.members if (reason := unsafe_reason(member))]
    if unsafe:
        return rejected(key, f"{uri}#{sample.wds_key}", UNSAFE_MEMBER, "; ".join(unsafe))
    by_ext = sample.first_by_extension()
    image_ext = next((ext for ext in image_extensions if ext in by_ext), None)
    if image_ext is None:
        names = ", ".join(posixpath.basename(member.name) for member in sample.members)
        return rejected(key, f"{uri}#{sample.wds_key}", NOT_AN_IMAGE, f"no image member (members: {names})")
    image = by_ext[image_ext]
    caption = next((by_ext[ext] for ext in CAPTION_EXTENSIONS if ext in by_ext), None)
    source = f"{uri}#{image.name}"
    to_read = [member for member in (image, caption) if member is not None]
    oversized = [member for member in to_read if member.size > max_bytes]
    if oversized:
        what = "" if oversized[0] is image else f"{oversized[0].name}: "
        return rejected(key, source, FILE_SIZE, size_detail(oversized[0].size, max_bytes, what))
    try:
        data = {
            member.name: retrier.call(functools.partial(archive.read, member), before_retry=archive.close)
            for member in sorted(to_read, key=lambda member: member.offset_data)  # forward seeks only
        }
    except Exception as error:  # transient (FAILED) or corrupt member data (REJECTED)
        archive.close()
        return error_row(key, source, error, UNREADABLE_TAR)
    alt = caption_from_sidecar(caption.name, data[caption.name]) if caption is not None else None
    return new_row(key, source, data[image.name], alt)
