"""``curate sample``: images from precomputed T5 embeddings with diffusers' PixArt pipelines.

No text encoder is loaded: the pipeline gets ``prompt_embeds`` + masks and the null embedding as the
negative (reference §6), exactly what a trainer's validation loop does with our features.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from curation.io.layout import filesystem, iter_tar_samples, load_npy, read_manifest
from curation.models.loading import resolve_device, resolve_dtype
from curation.terminal import progress

log = logging.getLogger(__name__)


@dataclass
class PromptEmbeds:
    """Padded features of N prompts: embeds (N, T, D), mask (N, T), and their texts."""

    texts: list[str]
    embeds: torch.Tensor
    mask: torch.Tensor


def pad_features(features: list[np.ndarray], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    dim = features[0].shape[1]
    embeds = torch.zeros(len(features), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(features), length, dtype=torch.int64)
    for i, array in enumerate(features):
        n = min(len(array), length)
        embeds[i, :n] = torch.from_numpy(array[:n].astype(np.float32))
        mask[i, :n] = 1
    return embeds, mask


def read_prompt_features(paths: list[Path], limit: int, skip_keys: set[str]) -> tuple[list[str], list[np.ndarray]]:
    """Captions and T5 features (real tokens) of up to ``limit`` samples, keys sorted within each tar."""
    texts, features = [], []
    for path in paths:
        members: dict[str, dict[str, bytes]] = {}
        with open(path, "rb") as file:
            for key, group in iter_tar_samples(file, extensions=("txt", "t5.npy")):
                members.setdefault(key, {}).update(group)
        for key in sorted(members):
            if key in skip_keys or len(texts) >= limit:
                continue
            texts.append(members[key]["txt"].decode())
            features.append(load_npy(members[key]["t5.npy"]))
    return texts, features


def load_source(source: Path, num: int) -> tuple[list[str], list[np.ndarray], dict]:
    """Prompts + features from a built dataset's shards or an embed-prompts folder."""
    if (source / "prompts.tar").exists():
        info = json.loads((source / "embeddings.json").read_text())
        texts, features = read_prompt_features([source / "prompts.tar"], num, skip_keys={"null"})
        return texts, features, {"max_length": info["max_length"], "embeddings": source}
    manifest = read_manifest(*filesystem(str(source)))
    texts, features = read_prompt_features(sorted((source / "shards").glob("*.tar")), num, skip_keys=set())
    info = {
        "max_length": manifest["config"]["t5"]["max_length"],
        "flavor": manifest["config"].get("flavor"),
        "embeddings": source / "embeddings",
    }
    return texts, features, info


def load_null_embed(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["uncond_prompt_embeds"].float(), data["uncond_prompt_embeds_mask"].long()


def _pipeline(model: str, flavor: str, lcm: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import LCMScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

    pipeline_class = PixArtSigmaPipeline if flavor == "sigma" else PixArtAlphaPipeline
    pipeline = pipeline_class.from_pretrained(model, text_encoder=None, tokenizer=None, dtype=dtype)
    if lcm:
        pipeline.scheduler = LCMScheduler.from_config(pipeline.scheduler.config)
    return pipeline.to(device)


def generate(
    pipeline, prompts: PromptEmbeds, null: tuple[torch.Tensor, torch.Tensor] | None, settings: dict, seed: int
) -> list[Image.Image]:
    """One image per prompt; the null embedding is the negative when guidance > 1."""
    images = []
    for i in progress(range(len(prompts.texts)), desc="sample", unit="image"):
        kwargs = dict(
            prompt=None,
            prompt_embeds=prompts.embeds[i : i + 1],
            prompt_attention_mask=prompts.mask[i : i + 1],
            negative_prompt=None,
            generator=torch.Generator("cpu").manual_seed(seed + i),
            **settings,
        )
        if settings["guidance_scale"] > 1:
            if null is None:
                raise ValueError(
                    "guidance > 1 needs the null embedding: run `curate embed-prompts` or pass --null-embed"
                )
            kwargs.update(negative_prompt_embeds=null[0], negative_prompt_attention_mask=null[1])
        images.append(pipeline(**kwargs).images[0])
    return images


def contact_sheet(images: list[Image.Image], captions: list[str], cell: int = 256) -> Image.Image:
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 24)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * cell, (i // columns) * (cell + 24)
        thumb = image.copy()
        thumb.thumbnail((cell, cell))
        sheet.paste(thumb, (x, y))
        draw.text((x + 4, y + cell + 4), caption[:40], fill="black")
    return sheet


def _settings(args: argparse.Namespace, pipeline) -> dict:
    size = pipeline.transformer.config.sample_size * pipeline.vae_scale_factor
    steps, guidance = (4, 0.0) if args.lcm else (args.steps, args.guidance)
    return {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": args.height or size,
        "width": args.width or size,
    }


def sample_command(args: argparse.Namespace) -> int:
    source = Path(args.source)
    texts, features, info = load_source(source, args.num)
    if not texts:
        raise ValueError(f"{source} holds no prompt embeddings")
    length = info["max_length"]
    embeds, mask = pad_features(features, length)
    null_path = (
        Path(args.null_embed) if args.null_embed else info["embeddings"] / f"null_embed_diffusers_{length}token.pth"
    )
    null = load_null_embed(null_path) if null_path.exists() else None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipeline = _pipeline(args.model, args.flavor or info.get("flavor") or "sigma", args.lcm, device, dtype)
    images = generate(
        pipeline, PromptEmbeds(texts, embeds.to(dtype), mask), _cast(null, dtype), _settings(args, pipeline), args.seed
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"{i:04d}.png")
    contact_sheet(images, texts).save(out / "grid.png")
    (out / "prompts.json").write_text(json.dumps(texts, indent=2))
    print(f"{len(images)} images and grid.png in {out}")
    return 0


def _cast(null, dtype):
    return None if null is None else (null[0].to(dtype), null[1])
