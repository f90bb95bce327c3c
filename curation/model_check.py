"""Can every model of a run be loaded? Checked on the driver before Ray starts, answered in one line.

A local path must exist and hold the subfolders the stage loads from. A hub id (``org/name``) must be in the
local Hugging Face cache when the hub is offline (``HF_HUB_OFFLINE``); otherwise the hub is asked (metadata
only, nothing is downloaded) whether the repo, the revision and the subfolders exist. An unreachable hub is an
error for an embedded run when the model is not cached either (its workers share this machine's cache); on a
cluster, whose nodes may have their own cache or network, it is only a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from curation.config import ModelRef, RunConfig

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "on", "yes", "true"}


class ModelUnavailableError(ValueError):
    """A model a run needs cannot be loaded; the message is one line naming the config key."""


@dataclass(frozen=True)
class Folder:
    """A subfolder a stage loads from (None: the model's root) and the config key that names it."""

    name: str | None
    key: str


@dataclass(frozen=True)
class Requirement:
    role: str  # the config key of the model, e.g. "vae.model"
    ref: ModelRef
    folders: tuple[Folder, ...]


def requirements(config: RunConfig) -> list[Requirement]:
    """Every model the run loads, with the subfolders its stage opens."""
    t5, caption = config.t5, config.caption.model
    found = [
        Requirement("caption.model", caption, (Folder(caption.subfolder, "caption.model.subfolder"),)),
        Requirement(
            "t5.model",
            t5.model,
            (
                Folder(t5.tokenizer_subfolder or t5.model.subfolder, "t5.tokenizer_subfolder"),
                Folder(t5.encoder_subfolder or t5.model.subfolder, "t5.encoder_subfolder"),
            ),
        ),
        Requirement("vae.model", config.vae.model, (Folder(config.vae.model.subfolder, "vae.model.subfolder"),)),
    ]
    for role, ref in config.scorers.model_refs().items():
        key = "scorers.clip" if role == "clip" else f"scorers.{role}.model"
        found.append(Requirement(key, ref, (Folder(ref.subfolder, f"{key}.subfolder"),)))
    return found


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` as set now (huggingface_hub reads them once, at import)."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((flag or "").lower() in _TRUE for flag in flags)


def check_models(config: RunConfig, embedded: bool = True) -> None:
    """Raise ``ModelUnavailableError`` for the first model of ``config`` that cannot be loaded."""
    from curation.models.loading import looks_local

    for requirement in requirements(config):
        path = requirement.ref.path
        if looks_local(path) or Path(path).expanduser().exists():
            check_local(requirement)
        else:
            check_hub(requirement, embedded)


def check_local(requirement: Requirement) -> None:
    root = Path(requirement.ref.path).expanduser()
    if not root.exists():
        raise ModelUnavailableError(
            f"{requirement.role}: {requirement.ref.path} not found (a local path; hub ids look like org/name)"
        )
    if root.is_dir():
        present = {p.name for p in root.iterdir() if p.is_dir()}
        _check_folders(requirement, present, str(root))


def _check_folders(requirement: Requirement, present: set[str], where: str) -> None:
    for folder in requirement.folders:
        if folder.name and folder.name.strip("/") not in present and not _nested_present(folder.name, present):
            holds = ", ".join(sorted(present)) or "no subfolders"
            raise ModelUnavailableError(
                f"{requirement.role}: {where} has no subfolder {folder.name!r} (it has: {holds}); "
                f"set {folder.key} to one of them, or to null for the folder itself"
            )


def _nested_present(name: str, present: set[str]) -> bool:
    """``a/b`` subfolders are accepted when their first part is present (deeper levels are the loader's)."""
    return "/" in name.strip("/") and name.strip("/").split("/")[0] in present


def cached_snapshot(ref: ModelRef) -> Path | None:
    """The local Hugging Face cache's snapshot of ``ref`` (its revision, default ``main``), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.path, revision=ref.revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def check_hub(requirement: Requirement, embedded: bool) -> None:
    ref = requirement.ref
    snapshot = cached_snapshot(ref)
    if hub_offline():
        if snapshot is None:
            raise ModelUnavailableError(
                f"{requirement.role}: {ref.path} is not in the local Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE): download it first (hf download {ref.path}) or give a local path"
            )
        _check_folders(requirement, {p.name for p in snapshot.iterdir() if p.is_dir()}, f"cached {ref.path}")
        return
    files = hub_files(requirement)
    if files is None:  # unreachable
        if snapshot is not None:
            return
        message = (
            f"{requirement.role}: {ref.path} is not in the local Hugging Face cache and the hub cannot be reached: "
            "check the network (or HF_ENDPOINT), download it first, or give a local path"
        )
        if embedded:
            raise ModelUnavailableError(message)
        log.warning("%s (the cluster's nodes may still load it)", message)
        return
    if files:  # an empty listing (no siblings in the answer) proves nothing
        _check_folders(requirement, {name.split("/")[0] for name in files if "/" in name}, ref.path)


def hub_files(requirement: Requirement) -> list[str] | None:
    """The repo's file names (one metadata request), or None when the hub cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    ref, role = requirement.ref, requirement.role
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        info = api.model_info(ref.path, revision=ref.revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelUnavailableError(
            f"{role}: {ref.path} is gated: accept its terms on the hub and log in (hf auth login)"
        ) from None
    except RevisionNotFoundError:
        raise ModelUnavailableError(f"{role}: {ref.path} has no revision {ref.revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelUnavailableError(
            f"{role}: {ref.path} is not a model on the Hugging Face hub (a typo? a private repo needs hf auth login)"
        ) from None
    except Exception as error:  # network of any kind (DNS, refused, TLS, timeout): the hub cannot be reached
        log.debug("hub check of %s failed: %r", ref.path, error)
        return None
    return [sibling.rfilename for sibling in info.siblings or []]
