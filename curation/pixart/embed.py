"""``curate embed-prompts``: T5 features of the empty prompt and of validation prompts.

Written twice: in our shard format (``prompts.tar``: ``KEY.txt``, ``KEY.json``, ``KEY.t5.npy`` with
real tokens only) and in the ``.pth`` files PixArt's train scripts load
(``null_embed_diffusers_{T}token.pth``, ``tmp/{prompt}_{T}token.pth``; reference §5).
No caption cleaning: PixArt computes these from the raw prompt strings.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import webdataset as wds

from curation.config import T5Config, apply_override, load_config, parse_config
from curation.io.layout import atomic_write, filesystem, npy_bytes, read_manifest
from curation.pixart.embed_files import write_null_embed, write_prompt_embed
from curation.stages.t5 import T5Stage

log = logging.getLogger(__name__)

# S:configs/PixArt_xl2_internal.py validation_prompts
PIXART_VALIDATION_PROMPTS = (
    "dog",
    "portrait photo of a girl, photograph, highly detailed face, depth of field",
    "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
    "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
    "A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, masterpiece",
)
NULL_KEY = "null"


def embed_prompts(t5_config: T5Config, prompts: list[str], out: str | Path) -> dict:
    """Encode "" and ``prompts`` with the dataset's T5; write both formats under ``out``."""
    out = Path(out)
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    stage = T5Stage(t5_config)
    stage.setup()
    texts = ["", *prompts]
    encoded = stage.encode(texts)
    length = t5_config.max_length
    keys = [NULL_KEY] + [f"prompt-{i:04d}" for i in range(len(prompts))]
    _write_tar(out / "prompts.tar", keys, texts, encoded, length)
    null_path = out / f"null_embed_diffusers_{length}token.pth"
    null_rows, null_tokens = stage.encode_padded("")
    write_null_embed(null_path, null_rows, length, real_tokens=null_tokens)
    written, skipped = [], []
    for prompt, (features, _, _) in zip(prompts, encoded[1:], strict=True):
        if "/" in prompt or not prompt.strip():
            skipped.append(prompt)  # PixArt uses the raw prompt as the file name
            continue
        write_prompt_embed(out / "tmp" / f"{prompt}_{length}token.pth", features, length)
        written.append(prompt)
    summary = {"null_embed": str(null_path), "prompts": written, "skipped_prompts": skipped, "max_length": length}
    (out / "embeddings.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_tar(path: Path, keys, texts, encoded, max_length: int) -> None:
    fs, local_path = filesystem(str(path))
    atomic_write(fs, local_path, lambda file: _write_prompt_samples(file, keys, texts, encoded, max_length))


def _write_prompt_samples(file, keys, texts, encoded, max_length: int) -> None:
    with wds.TarWriter(file) as sink:
        for key, text, (features, tokens, truncated) in zip(keys, texts, encoded, strict=True):
            meta = {
                "key": key,
                "prompt": text,
                "t5_tokens": tokens,
                "t5_truncated": truncated,
                "max_length": max_length,
            }
            t5 = npy_bytes(features.astype(np.float16))
            sink.write({"__key__": key, "txt": text, "json": json.dumps(meta).encode(), "t5.npy": t5})


def _t5_config(args: argparse.Namespace) -> tuple[T5Config, Path]:
    """The T5 settings of a recipe (``--config``) or of the dataset's manifest, with ``--set`` applied."""
    if not args.dataset and not (args.config and args.out):
        raise ValueError("give a DATASET, or --config with --out")
    if args.config:
        config = load_config(args.config, args.set)
    else:
        data = read_manifest(*filesystem(args.dataset))["config"]
        for assignment in args.set:
            apply_override(data, assignment)
        config = parse_config(data)
    return config.t5, Path(args.out or Path(args.dataset) / "embeddings")


def _prompts(path: str | None) -> list[str]:
    if not path:
        return list(PIXART_VALIDATION_PROMPTS)
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def embed_prompts_command(args: argparse.Namespace) -> int:
    t5_config, out = _t5_config(args)
    summary = embed_prompts(t5_config, _prompts(args.prompts), out)
    print(json.dumps(summary, indent=2))
    return 0


def second_caption_encoders(dataset: str, caption_names: tuple[str, ...] = ("alt",)) -> dict:
    """T5 encoders for Σ's ``sharegpt4v`` captions, with the dataset's own T5 and caption policy.

    The model loads on the first call, so an export without second captions never loads T5.
    """
    from curation.text import prepare_t5_text

    config = T5Config.model_validate(read_manifest(*filesystem(dataset))["config"]["t5"])
    stage = T5Stage(config)

    def encode(texts: list[str]) -> list[np.ndarray]:
        prepared = [prepare_t5_text(text, config.caption_cleaning) for text in texts]
        return [features for features, _, _ in stage.encode(prepared)]

    return dict.fromkeys(caption_names, encode)
