"""The one way the pipeline loads a model: a ``ModelRef`` in, the model on its device in eval mode out.

Every model stage (caption, VAE, T5, scorers) loads through ``load_pretrained`` / ``load_processor``, so the
recipe lives in one place: device and dtype resolved inside the worker (``curation.models.loading``),
``subfolder`` and ``revision`` from the ref, ``trust_remote_code`` only when the ref opts in. Revisions
pin hub ids; on a local folder ``from_pretrained`` reads the folder as it is and ignores the revision, so
the manifest records a hash of local weights instead (``model_provenance``).

Single weights files that are not ``from_pretrained`` checkpoints (the LAION aesthetic MLP) resolve
through ``weights_file``: a file path, a file in a local folder, or a file of a hub repo at the pinned
revision; they load with ``torch.load(weights_only=True)`` (never a pickle of code) or safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from curation.config import ModelRef
from curation.models.loading import pretrained_kwargs, provenance, resolve_device, resolve_dtype


class LoadedModel(NamedTuple):
    model: Any
    device: torch.device
    dtype: torch.dtype


def hub_kwargs(ref: ModelRef, subfolder: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` keywords of a ref: subfolder (the argument, else the ref's), revision, remote code."""
    kwargs = pretrained_kwargs(ref, subfolder)
    if ref.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def load_pretrained(
    cls, ref: ModelRef, subfolder: str | None = None, *, dtype: torch.dtype | None = None, **extra: Any
) -> LoadedModel:
    """``cls.from_pretrained`` (transformers or diffusers) in the ref's dtype, moved to its device, eval mode.

    ``dtype`` overrides the ref's (e.g. float32 for a model too small to gain from bf16); ``extra`` goes to
    ``from_pretrained`` as is (``attn_implementation``, ``cache_dir``, ``local_files_only``...).
    """
    device = resolve_device(ref.device)
    if dtype is None:
        dtype = resolve_dtype(ref.dtype, device)
    model = cls.from_pretrained(ref.path, dtype=dtype, **hub_kwargs(ref, subfolder), **extra)
    return LoadedModel(model.to(device).eval(), device, dtype)


def load_processor(cls, ref: ModelRef, subfolder: str | None = None, **extra: Any):
    """A tokenizer / image processor / processor of the same ref (same subfolder, revision, remote-code rule)."""
    return cls.from_pretrained(ref.path, **hub_kwargs(ref, subfolder), **extra)


def weights_file(ref: ModelRef, filename: str, **extra: Any) -> Path:
    """A single weights file: ``ref.path`` itself, ``path/subfolder/filename`` of a local folder, or that file of
    the hub repo ``ref.path`` at ``ref.revision`` (``extra`` goes to ``hf_hub_download``)."""
    local = Path(ref.path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        path = local / (ref.subfolder or "") / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (set the file name or point the path at the file)")
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(ref.path, filename, subfolder=ref.subfolder, revision=ref.revision, **extra))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``torch.save``d state dict loaded without unpickling code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def model_provenance(
    ref: ModelRef, subfolders: list[str | None] | None = None, filename: str | None = None
) -> dict[str, Any]:
    """``loading.provenance`` of the model (local weights hash or hub revision, device, dtype); for a single
    weights file in a local folder, the hash of that file; plus ``file`` and ``trust_remote_code`` when set."""
    local = Path(ref.path).expanduser()
    if filename and local.is_dir():
        record = provenance(ref.model_copy(update={"path": str(weights_file(ref, filename)), "subfolder": None}))
        record["path"] = ref.path
    else:
        record = provenance(ref, subfolders)
    if filename:
        record["file"] = filename
    if ref.trust_remote_code:
        record["trust_remote_code"] = True
    return record
