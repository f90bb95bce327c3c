"""``curate embed-prompts``: T5 features of the empty prompt and of validation prompts.

Written twice: in our shard format (``prompts.tar``: ``KEY.txt``, ``KEY.json``, ``KEY.t5.npy`` with
real tokens only) and in the ``.pth`` files PixArt's train scripts load
(``null_embed_diffusers_{T}token.pth``, ``tmp/{prompt}_{T}token.pth``; reference §5).
No caption cleaning: PixArt computes these from the raw prompt strings.

Files are staged in a local temporary folder and moved into place one at a time (each move atomic),
the null embedding and ``embeddings.json`` last, so a reader never sees a partial file and a folder
with the null embedding holds the whole set. ``curate export pixart`` computes the same set into
``DATASET/embeddings/`` when the dataset has none.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import webdataset as wds

from curation.config import T5Config, apply_override, load_config, parse_config
from curation.io.layout import atomic_write, filesystem, npy_bytes, read_manifest
from curation.models.loading import check_model_paths
from curation.pixart.embed_files import EMBEDDINGS_DIR, null_embed_name, write_null_embed, write_prompt_embed
from curation.stages.t5 import T5Stage
from curation.terminal import progress

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
SUMMARY_NAME = "embeddings.json"


def embed_prompts(t5_config: T5Config, prompts: list[str], out: str | Path, fallback: str | None = None) -> dict:
    """Encode "" and ``prompts`` with the dataset's T5; write both formats under ``out`` (folder or fsspec URL).

    ``fallback``: where to write instead when ``out`` cannot be written (a read-only dataset); the summary's
    ``folder`` says where the files went.
    """
    out = str(out).rstrip("/")
    last = (null_embed_name(t5_config.max_length), SUMMARY_NAME)
    with tempfile.TemporaryDirectory(prefix="embed-prompts-") as staging:
        summary = _write_embeddings(t5_config, prompts, Path(staging), out)
        try:
            _publish(Path(staging), out, last)
        except OSError as error:  # PermissionError, a read-only bucket, …
            if fallback is None:
                raise
            log.warning("cannot write the embeddings to %s (%s); writing them to %s", out, error, fallback)
            _publish(Path(staging), fallback, last)
            null_embed = f"{fallback}/{last[0]}"
            return {**summary, "null_embed": null_embed, "folder": fallback, "not_written_to": f"{out}: {error}"}
    return {**summary, "folder": out}


def _encode_with_progress(stage: T5Stage, texts: list[str]) -> list:
    """``stage.encode`` in chunks of its micro-batch, with a progress bar (a prompt file can be long)."""
    size = stage.resources.batch_size
    chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
    return [item for chunk in progress(chunks, desc="embed-prompts", unit="batch") for item in stage.encode(chunk)]


def _write_embeddings(t5_config: T5Config, prompts: list[str], staging: Path, out: str) -> dict:
    (staging / "tmp").mkdir()
    stage = T5Stage(t5_config)
    stage.setup()
    texts = ["", *prompts]
    encoded = _encode_with_progress(stage, texts)
    length = t5_config.max_length
    keys = [NULL_KEY] + [f"prompt-{i:04d}" for i in range(len(prompts))]
    with open(staging / "prompts.tar", "wb") as file:
        _write_prompt_samples(file, keys, texts, encoded, length)
    null_rows, null_tokens = stage.encode_padded("")
    write_null_embed(staging / null_embed_name(length), null_rows, length, real_tokens=null_tokens)
    written, skipped = [], []
    for prompt, (features, _, _) in zip(prompts, encoded[1:], strict=True):
        if "/" in prompt or not prompt.strip():
            skipped.append(prompt)  # PixArt uses the raw prompt as the file name
            continue
        write_prompt_embed(staging / "tmp" / f"{prompt}_{length}token.pth", features, length)
        written.append(prompt)
    summary = {
        "null_embed": f"{out}/{null_embed_name(length)}",
        "prompts": written,
        "skipped_prompts": skipped,
        "max_length": length,
    }
    (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return summary


def _publish(staging: Path, out: str, last: tuple[str, ...]) -> None:
    """Move every staged file to ``out`` atomically, the ``last`` names after all others, in that order."""
    fs, root = filesystem(out)
    files = [path for path in staging.rglob("*") if path.is_file()]
    order = {name: rank for rank, name in enumerate(last, start=1)}
    for path in sorted(files, key=lambda p: (order.get(p.name, 0), p.as_posix())):
        atomic_write(fs, f"{root}/{path.relative_to(staging).as_posix()}", _copier(path))


def _copier(path: Path):
    def copy(target) -> None:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, target)

    return copy


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


def _t5_config(args: argparse.Namespace) -> tuple[T5Config, str]:
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
    return config.t5, args.out or f"{args.dataset.rstrip('/')}/{EMBEDDINGS_DIR}"


def _prompts(path: str | None) -> list[str]:
    if not path:
        return list(PIXART_VALIDATION_PROMPTS)
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def embed_prompts_command(args: argparse.Namespace) -> int:
    t5_config, out = _t5_config(args)
    summary = embed_prompts(t5_config, _prompts(args.prompts), out)
    print(json.dumps(summary, indent=2))
    return 0


def dataset_t5_config(dataset: str, model_path: str | None = None) -> T5Config:
    """The T5 a dataset was built with (its manifest), optionally at another path (``--t5-model``)."""
    config = T5Config.model_validate(read_manifest(*filesystem(dataset))["config"]["t5"])
    if model_path:
        config = config.model_copy(update={"model": config.model.model_copy(update={"path": model_path})})
    return config


def _checked(config: T5Config) -> T5Config:
    try:
        check_model_paths([config.model])
    except FileNotFoundError as error:
        raise FileNotFoundError(f"T5 {error}; pass --t5-model PATH (the T5 the dataset was built with)") from None
    return config


def cache_prompt_embeddings(dataset: str, model_path: str | None = None, fallback: str | None = None) -> dict:
    """The null and PixArt's validation-prompt embeddings, with the dataset's T5, into ``DATASET/embeddings/``
    (or ``fallback`` when the dataset is read-only)."""
    config = _checked(dataset_t5_config(dataset, model_path))
    log.info("computing the null and validation-prompt embeddings with %s", config.model.path)
    out = f"{dataset.rstrip('/')}/{EMBEDDINGS_DIR}"
    return embed_prompts(config, list(PIXART_VALIDATION_PROMPTS), out, fallback)


def second_caption_encoders(
    dataset: str, caption_names: tuple[str, ...] = ("alt",), model_path: str | None = None
) -> dict:
    """T5 encoders for captions the dataset holds no features for, with its own T5 and caption policy.

    The model path is checked and the model loaded on the first call, so an export whose captions all
    have stored features never touches T5.
    """
    from curation.text import prepare_t5_text

    config = dataset_t5_config(dataset, model_path)
    stage = T5Stage(config)

    def encode(texts: list[str]) -> list[np.ndarray]:
        if stage.encoder is None:
            _checked(config)
        prepared = [prepare_t5_text(text, config.caption_cleaning) for text in texts]
        return [features for features, _, _ in stage.encode(prepared)]

    return dict.fromkeys(caption_names, encode)
