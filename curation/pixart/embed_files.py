"""The ``.pth`` embedding files PixArt's train scripts load: null embedding and validation prompts (§5)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec import AbstractFileSystem

from curation.io.layout import TMP_PREFIX
from curation.pixart.loader import pad_tokens

EMBEDDINGS_DIR = "embeddings"  # DATASET/embeddings/: what `curate embed-prompts` writes and the export copies


def _padded_embedding(embeds: np.ndarray, max_length: int, real_tokens: int | None) -> tuple[torch.Tensor, ...]:
    padded, mask = pad_tokens(np.asarray(embeds), max_length)
    if real_tokens is not None:  # the caller passed the encoder's full padded output
        mask[:] = 0
        mask[:real_tokens] = 1
    return torch.from_numpy(padded)[None], torch.from_numpy(mask)[None]


def write_null_embed(path: str | Path, embeds: np.ndarray, max_length: int, *, real_tokens: int | None = None) -> None:
    """``null_embed_diffusers_{T}token.pth``: T5 of "" as (1, T, D) plus the mask under both key names (§5).

    PixArt-Σ copies ``uncond_prompt_embeds[0]`` into ``y_embedding`` and CFG dropout keeps the caption's
    mask, so rows past the real tokens can be attended: pass the encoder's full T-row output with
    ``real_tokens`` when you have it; a shorter array is padded by repeating its last row.
    """
    features, mask = _padded_embedding(embeds, max_length, real_tokens)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # S's train.py reads the mask as uncond_prompt_embeds_mask, A's train_diffusers.py as uncond_prompt_attention_mask.
    masks = {"uncond_prompt_embeds_mask": mask, "uncond_prompt_attention_mask": mask}
    torch.save({"uncond_prompt_embeds": features, **masks}, path)


def write_prompt_embed(
    path: str | Path, embeds: np.ndarray, max_length: int, *, real_tokens: int | None = None
) -> None:
    """``{prompt}_{T}token.pth`` for validation: ``caption_embeds`` (1, T, D) and ``emb_mask`` (1, T)."""
    features, mask = _padded_embedding(embeds, max_length, real_tokens)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"caption_embeds": features, "emb_mask": mask}, path)


def null_embed_name(max_length: int) -> str:
    return f"null_embed_diffusers_{max_length}token.pth"


def validation_embed_paths(fs: AbstractFileSystem, folder: str, max_length: int) -> list[str]:
    """``{folder}/tmp/{prompt}_{T}token.pth`` files (temp files of a write in progress excluded)."""
    found = fs.glob(f"{folder}/tmp/*_{max_length}token.pth")
    return sorted(path for path in found if not path.rsplit("/", 1)[-1].startswith(TMP_PREFIX))


def has_embeddings(fs: AbstractFileSystem, folder: str, max_length: int) -> bool:
    """``folder`` (``DATASET/embeddings``) holds a null and at least one validation-prompt embedding of length T."""
    return fs.exists(f"{folder}/{null_embed_name(max_length)}") and bool(
        validation_embed_paths(fs, folder, max_length)
    )


def _copy_out(fs: AbstractFileSystem, source: str, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(target)


def copy_embeddings(fs: AbstractFileSystem, folder: str, dest: Path, max_length: int) -> dict[str, Any]:
    """Null and validation-prompt embeddings from ``folder`` to PixArt's paths under ``DEST/output/``."""
    null_name = null_embed_name(max_length)
    copied: dict[str, Any] = {"null_embed": None, "validation_prompts": []}
    if fs.exists(f"{folder}/{null_name}"):
        copied["null_embed"] = _copy_out(
            fs, f"{folder}/{null_name}", dest / "output" / "pretrained_models" / null_name
        )
    for source in validation_embed_paths(fs, folder, max_length):
        target = dest / "output" / "tmp" / source.rsplit("/", 1)[-1]
        copied["validation_prompts"].append(_copy_out(fs, source, target))
    return copied
