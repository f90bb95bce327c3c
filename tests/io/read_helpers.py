"""Builders shared by the reader tests: images, files, tars (with any member type) and a flaky filesystem."""

from __future__ import annotations

import errno
import io
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from curation.config import ReaderConfig
from curation.io.readers import read_unit
from curation.io.retry import RetryPolicy


def image_bytes(color=(200, 30, 30), size=(8, 6), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def reader_config(**overrides: Any) -> ReaderConfig:
    """A reader config without an extension allow-list unless one is given (every file is an input)."""
    extensions = overrides.pop("extensions", None)
    return ReaderConfig(**overrides).model_copy(update={"extensions": extensions})


def no_sleep_retry(attempts: int = 3, sleeps: list[float] | None = None) -> RetryPolicy:
    sleep = sleeps.append if sleeps is not None else _no_sleep
    return RetryPolicy(attempts=attempts, base_delay_s=0.01, sleep=sleep)


def _no_sleep(_seconds: float) -> None:
    return None


def read_all(units, config: ReaderConfig | None = None, **read_options: Any) -> list[dict]:
    return [row for unit in units for row in read_unit(unit, config or reader_config(), **read_options)]


def by_key(rows) -> dict[str, dict]:
    return {row["key"]: row for row in rows}


def outcome(row: dict) -> tuple:
    return row["status"], row["stage"], row["reason"]


# ------------------------------------------------------------------ tars


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    return write(path, tar_bytes([regular(name, data) for name, data in members]))


# ------------------------------------------------------------------ a filesystem with injected I/O errors


class FlakyFileSystem(LocalFileSystem):
    """The local filesystem under ``flaky://``, failing opens or reads as ``plans`` says.

    ``plans[path]`` lists what the next opens of ``path`` do, in order: ``"fail"`` (the open raises an
    I/O error), ``"ok"``, or an int N (the handle's first N reads work, then every read raises a
    connection reset). Opens beyond the list work. ``opens`` counts opens per path.
    """

    protocol = "flaky"
    plans: ClassVar[dict[str, list[str | int]]] = {}
    opens: ClassVar[Counter] = Counter()

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        self.opens[path] += 1
        actions = self.plans.get(path) or []
        action = actions.pop(0) if actions else "ok"
        if action == "fail":
            raise OSError(errno.EIO, "injected I/O error", path)
        handle = super()._open(path, mode, block_size, **kwargs)
        return FailingReads(handle, action) if isinstance(action, int) else handle

    @classmethod
    def reset(cls) -> None:
        cls.plans.clear()
        cls.opens.clear()


class FailingReads:
    """A file handle whose reads fail after the first ``reads_ok``."""

    def __init__(self, inner, reads_ok: int) -> None:
        self._inner = inner
        self._reads_ok = reads_ok

    def read(self, *args):
        if self._reads_ok <= 0:
            raise ConnectionResetError(errno.ECONNRESET, "injected connection reset")
        self._reads_ok -= 1
        return self._inner.read(*args)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._inner.close()


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
