"""Device/dtype resolution and model provenance, shared by every model stage.

A pipeline run resolves ``device: auto`` / ``dtype: auto`` once, on the driver, from the cluster's
resources (``resolve_on_driver``), records the result per model in the manifest and hands the resolved
values to the stages, so every worker computes with exactly what was recorded and a resume can refuse
to mix numerics. ``resolve_device`` / ``resolve_dtype`` turn those (or a standalone tool's ``auto``) into
torch objects where the model is loaded.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from curation.config import ModelRef, RunConfig

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


def resolve_on_driver(ref: ModelRef, num_gpus: float, cluster_gpus: float) -> ModelRef:
    """``ref`` with ``auto`` device and dtype replaced by what its workers will use.

    device ``auto``: ``cuda`` when the stage asks for GPUs (``num_gpus > 0``) and the cluster has some, else
    ``cpu`` (Ray hides GPUs from workers that did not ask for one). dtype ``auto``: ``bfloat16`` on CUDA,
    ``float32`` on CPU. Whether the cluster's GPUs support bf16 cannot be known on the driver: bf16 is
    assumed on GPU clusters (pre-Ampere cards: set ``dtype: float32`` or ``float16`` explicitly).
    """
    device = ref.device
    if device == "auto":
        device = "cuda" if num_gpus > 0 and cluster_gpus > 0 else "cpu"
    dtype = ref.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if (device, dtype) == (ref.device, ref.dtype):
        return ref
    return ref.model_copy(update={"device": device, "dtype": dtype})


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
_MODEL_FILES = ("*.safetensors", "*.bin", "*.model", "*.json", "*.txt", "*.jinja")  # in folders


def weights_hash(paths: list[Path]) -> str:
    """sha256 over the model files of local folders (or single weight files): names, sizes, and the first
    and last 4 MiB of each.

    Sampling keeps a 20 GB T5-XXL checkpoint cheap to fingerprint at every run start; any re-save,
    fine-tune or different file set changes the sampled bytes or the sizes.
    """
    digest = hashlib.sha256()
    for path in paths:
        files = [path] if path.is_file() else {f for pattern in _MODEL_FILES for f in path.rglob(pattern)}
        for file in sorted(f for f in files if f.is_file()):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(path) if file != path else file.name}:{size}".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(_SAMPLE_BYTES))
                if size > 2 * _SAMPLE_BYTES:
                    handle.seek(-_SAMPLE_BYTES, 2)
                    digest.update(handle.read())
    return digest.hexdigest()[:16]


def provenance(ref: ModelRef, subfolders: list[str | None] | None = None) -> dict[str, Any]:
    """What the manifest records for a model: local path (folder or weights file) + weights hash, or hub id +
    revision; and the device and dtype it runs with (``auto`` until resolved by ``resolve_on_driver``)."""
    folders = [f for f in (subfolders or [ref.subfolder]) if f] or [""]
    record: dict[str, Any] = {"path": ref.path, "subfolders": [f for f in folders if f], "revision": ref.revision}
    local = Path(ref.path).expanduser()
    if local.is_dir():
        record["weights_sha256_sampled"] = weights_hash([local / f for f in folders])
    elif local.is_file():
        record["weights_sha256_sampled"] = weights_hash([local])
    else:
        record["revision"] = ref.revision or "main (unpinned)"
    record.update(device=ref.device, dtype=ref.dtype)
    return record


MODEL_SECTIONS = ("caption", "t5", "vae", "scorers")  # config sections whose stages load models


def resolve_numerics(config: RunConfig, cluster_gpus: float) -> RunConfig:
    """A copy of a run config whose model stages' models have their device and dtype resolved
    (``resolve_on_driver``, with each section's ``resources.num_gpus``)."""
    from curation.models.paths import _map_model_refs  # paths imports this module

    updates = {}
    for name in MODEL_SECTIONS:
        section = getattr(config, name, None)
        if section is None:
            continue
        num_gpus = section.resources.num_gpus
        resolve = functools.partial(resolve_on_driver, num_gpus=num_gpus, cluster_gpus=cluster_gpus)
        resolved = _map_model_refs(section, resolve)
        if resolved is not section:
            updates[name] = resolved
    return config.model_copy(update=updates) if updates else config


def stage_models(config: RunConfig) -> dict[str, tuple[ModelRef, list[str | None] | None]]:
    """The caption, T5 and VAE models with the subfolders their provenance covers (T5: tokenizer + encoder)."""
    t5 = config.t5
    return {
        "caption": (config.caption.model, None),
        "t5": (t5.model, [t5.tokenizer_subfolder, t5.encoder_subfolder]),
        "vae": (config.vae.model, None),
    }


def model_records(config: RunConfig) -> dict[str, dict[str, Any]]:
    """``manifest.models``: ``provenance`` of every model the run loads, {caption, t5, vae, scorers.<role>}."""
    records = {name: provenance(ref, subfolders) for name, (ref, subfolders) in stage_models(config).items()}
    from curation.models.wrappers import model_provenance  # wrappers imports this module

    for role, ref in config.scorers.model_refs().items():
        filename = config.scorers.aesthetic.weights_file if role == "aesthetic" else None
        records[f"scorers.{role}"] = model_provenance(ref, filename=filename)
    return records


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (``org/name`` has exactly one slash and no leading dot)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def check_model_paths(refs: list[ModelRef]) -> None:
    """Fail on the driver, with the path in the message, before any worker tries to load a missing model."""
    missing = sorted({ref.path for ref in refs if looks_local(ref.path) and not Path(ref.path).expanduser().exists()})
    if missing:
        raise FileNotFoundError(f"model path not found: {', '.join(missing)} (hub ids look like org/name)")
