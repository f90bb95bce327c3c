"""Local model paths that hold on every node of a Ray cluster.

A recipe's relative paths are relative to the directory ``curate`` runs in: the repository locally,
the job's copy of the working dir under ``ray job submit --working-dir .``. Stage workers do not run
there: each node unpacks its own copy of the working dir, and a worker's current directory is not the
driver's. So:

- the driver makes every local model path, and ``tiny_models_dir``, absolute before it builds the
  stages (``resolve_model_paths``); hub ids (``org/name``) are left alone;
- a worker whose model lies under ``tiny_models_dir`` and is missing on its node creates the tiny models
  there itself (``tiny_models_on_this_node``, wrapped around a stage factory by ``ModelsOnNode``): they
  are deterministic (fixed seeds), so every node gets the same bytes. Workers of one node take turns
  through a file lock, so none reads a half-written model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from pydantic import BaseModel

from curation.config import ModelRef
from curation.models.loading import looks_local
from curation.models.tiny import ensure_tiny_models

T = TypeVar("T")


def absolute(path: str, base: str | Path) -> str:
    """``path`` (``~`` expanded) joined to ``base`` and normalised; absolute paths stay as they are."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def is_local(path: str, base: str | Path) -> bool:
    """A filesystem path: it looks like one (``./x``, ``/x``, ``a/b/c``) or exists under ``base``."""
    return looks_local(path) or os.path.exists(absolute(path, base))


def _map_model_refs(value: Any, change: Callable[[ModelRef], ModelRef]) -> Any:
    """``value`` with ``change`` applied to every ``ModelRef`` inside it (pydantic models, lists, dicts)."""
    if isinstance(value, ModelRef):
        return change(value)
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _map_model_refs(old, change)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, list | tuple):
        items = [_map_model_refs(item, change) for item in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        changed = {key: _map_model_refs(item, change) for key, item in value.items()}
        return changed if any(changed[key] is not value[key] for key in value) else value
    return value


def model_refs(config: BaseModel) -> list[ModelRef]:
    """Every model a config names, in field order."""
    found: list[ModelRef] = []

    def collect(ref: ModelRef) -> ModelRef:
        found.append(ref)
        return ref

    _map_model_refs(config, collect)
    return found


def resolve_model_paths(config: T, base: str | Path | None = None) -> T:
    """A copy of a run config whose local model paths and ``tiny_models_dir`` are absolute.

    ``base`` defaults to the current directory (the driver's). Use the copy to build and run the stages;
    fingerprint and record the config as given, so that resuming from another directory (another job's
    copy of the working dir) is not a different config.
    """
    root = Path(base) if base is not None else Path.cwd()

    def make_absolute(ref: ModelRef) -> ModelRef:
        if not is_local(ref.path, root):
            return ref
        return ref.model_copy(update={"path": absolute(ref.path, root)})

    resolved = _map_model_refs(config, make_absolute)
    tiny = getattr(resolved, "tiny_models_dir", None)
    if tiny:
        resolved = resolved.model_copy(update={"tiny_models_dir": absolute(tiny, root)})
    return resolved


def ensure_tiny_models_locked(directory: str | Path) -> Path:
    """``ensure_tiny_models`` under a lock file beside ``directory``: one writer per node at a time."""
    root = Path(directory)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        return ensure_tiny_models(root)


def tiny_models_on_this_node(model_paths: Iterable[str], tiny_models_dir: str | None) -> bool:
    """Create the tiny models here when a model path lies under ``tiny_models_dir`` and they are missing.

    Returns whether any model path lies under ``tiny_models_dir`` (then the models exist on return).
    """
    if not tiny_models_dir:
        return False
    root = Path(tiny_models_dir).absolute()
    if not any(Path(path).absolute().is_relative_to(root) for path in model_paths):
        return False
    ensure_tiny_models_locked(root)  # its marker check is cheap; the lock keeps readers off a rewrite
    return True


@dataclass(frozen=True)
class ModelsOnNode:
    """A stage factory that first makes the tiny models available on the node it is called on."""

    factory: Callable[[], Any]
    model_paths: tuple[str, ...]
    tiny_models_dir: str | None

    def __call__(self) -> Any:
        tiny_models_on_this_node(self.model_paths, self.tiny_models_dir)
        return self.factory()
