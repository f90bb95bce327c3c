"""Device/dtype resolution and model provenance, shared by every model stage.

Resolution happens inside the worker that loads the model (``Stage.setup``), never on the driver:
the driver of a GPU cluster job is often CPU-only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from curation.config import ModelRef

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp32 on pre-Ampere cards without bf16), fp32 on CPU."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def pretrained_kwargs(ref: ModelRef, subfolder: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` (the path itself is passed positionally)."""
    kwargs: dict[str, Any] = {}
    folder = subfolder if subfolder is not None else ref.subfolder
    if folder:
        kwargs["subfolder"] = folder
    if ref.revision:
        kwargs["revision"] = ref.revision
    return kwargs


_SAMPLE_BYTES = 4 << 20


def weights_hash(folders: list[Path]) -> str:
    """sha256 over the model files of local folders: names, sizes, and the first and last 4 MiB.

    Sampling keeps a 20 GB T5-XXL checkpoint cheap to fingerprint at every run start; any re-save,
    fine-tune or different file set changes the sampled bytes or the sizes.
    """
    digest = hashlib.sha256()
    for folder in folders:
        patterns = ("*.safetensors", "*.bin", "*.model", "*.json", "*.txt", "*.jinja")
        for file in sorted({f for pattern in patterns for f in folder.rglob(pattern) if f.is_file()}):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(folder)}:{size}".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(_SAMPLE_BYTES))
                if size > 2 * _SAMPLE_BYTES:
                    handle.seek(-_SAMPLE_BYTES, 2)
                    digest.update(handle.read())
    return digest.hexdigest()[:16]


def provenance(ref: ModelRef, subfolders: list[str | None] | None = None) -> dict[str, Any]:
    """What the manifest records for a model: local path + weights hash, or hub id + revision."""
    folders = [f for f in (subfolders or [ref.subfolder]) if f] or [""]
    record: dict[str, Any] = {"path": ref.path, "subfolders": [f for f in folders if f], "revision": ref.revision}
    local = Path(ref.path)
    if local.is_dir():
        record["weights_sha256_sampled"] = weights_hash([local / f for f in folders])
    else:
        record["revision"] = ref.revision or "main (unpinned)"
    return record


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``org/name`` has exactly one slash and no leading dot)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def check_model_paths(refs: list[ModelRef]) -> None:
    """Fail on the driver, with the path in the message, before any worker tries to load a missing model."""
    missing = sorted({ref.path for ref in refs if looks_local(ref.path) and not Path(ref.path).expanduser().exists()})
    if missing:
        raise FileNotFoundError(f"model path not found: {', '.join(missing)} (hub ids look like org/name)")
