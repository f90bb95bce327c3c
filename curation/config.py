"""Typed run configuration: YAML recipe + ``--set`` overrides, validated, fingerprinted.

Unknown keys anywhere are an error that names the key's dotted path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A recipe that cannot be used, with the offending key path in the message."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """Per-worker resources and pool size of one stage (never detected on the driver)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    num_workers: int = Field(1, ge=1, description="fixed actor-pool size (model stages) or task concurrency")
    batch_size: int = Field(8, ge=1, description="model micro-batch (what one forward pass / generate call takes)")
    rows_per_block: int | None = Field(
        None,
        ge=1,
        description="rows a worker receives at once (default: the stage's own); T5 sorts and the VAE "
        "groups by bucket within it. Bounded in bytes by ray.max_block_bytes",
    )

    @field_validator("num_gpus")
    @classmethod
    def _valid_gpu_fraction(cls, value: float) -> float:
        if value < 0 or (value > 1 and not float(value).is_integer()):
            raise ValueError("num_gpus must be a fraction in [0, 1] or a whole number")
        return value


class ModelRef(Strict):
    """Where a model's weights come from: a Hugging Face id or a local path (+ subfolder, revision)."""

    path: str
    subfolder: str | None = None
    revision: str | None = None
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N; auto picks cuda when the worker has one")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class ReaderConfig(Strict):
    extensions: list[str] | None = Field(
        None, description="folder inputs: only files with these extensions are read (skipped ones are counted)"
    )
    image_column: str = "image"  # parquet: bytes (or {"bytes": ...} struct) column
    path_column: str | None = None  # parquet: column of image paths/URIs, used when image_column is absent
    key_column: str | None = None  # parquet: stable id column; else FILE-STEM_ROW
    caption_column: str | None = None  # parquet: becomes the alt caption
    files_per_task: int = Field(64, ge=1, description="image-folder files per read task")


class FilterConfig(Strict):
    resources: Resources = Resources(num_cpus=1, num_workers=2, batch_size=32)
    min_side: int = Field(256, ge=1)
    max_aspect_ratio: float = Field(4.0, ge=1.0, description="max of h/w and w/h")
    max_pixels: int = Field(178_956_970, ge=1, description="decompression-bomb guard (PIL's default limit)")
    max_bytes: int = Field(100 * 2**20, ge=1)
    draft: bool = Field(
        True, description="reduced-scale JPEG decode (>= 2x every prepared size) when the original is kept"
    )


class CaptionConfig(Strict):
    model: ModelRef
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=16)
    name: str = "dense"
    prompt: str = "Describe this image and its style in a very detailed manner."
    prompt_with_alt: str = (
        'Given the caption of this image "{alt}", describe this image and its style in a very detailed manner.'
    )
    max_new_tokens: int = Field(300, ge=1)
    do_sample: bool = False
    temperature: float = 0.2
    max_image_side: int = Field(1024, ge=64, description="images are shrunk to this before the processor")


class T5Config(Strict):
    model: ModelRef  # points at the repo root; the subfolders below hold tokenizer and encoder
    tokenizer_subfolder: str | None = "tokenizer"
    encoder_subfolder: str | None = "text_encoder"
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=64)
    max_length: int = Field(300, ge=1, description="120 for PixArt-alpha, 300 for PixArt-sigma")
    caption_cleaning: Literal["none", "alpha"] = "none"


class VAEConfig(Strict):
    model: ModelRef
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=8)
    aspect_ratios: Literal[256, 512, 1024, 2048] = 1024
    interpolation: Literal["bicubic", "lanczos"] = "bicubic"
    scale_factor: float = Field(0.13025, description="recorded for training; latents are stored unscaled")
    channels_last: bool = Field(True, description="NHWC convolutions (faster on CPU and on tensor cores)")
    compile: bool = Field(False, description="torch.compile the encoder (CUDA; pays a warm-up per bucket shape)")


class WriterConfig(Strict):
    samples_per_shard: int = Field(1000, ge=1)
    num_workers: int = Field(1, ge=1)


class RayConfig(Strict):
    address: str | None = None  # else RAY_ADDRESS, else an embedded local Ray
    num_cpus: int | None = None  # embedded Ray only
    object_store_memory: int | None = None  # embedded Ray only
    max_block_bytes: int = Field(
        64 * 2**20, ge=2**20, description="Ray Data's target block size: bounds what a block of prepared pixels holds"
    )


class RunConfig(Strict):
    input: list[str] = []
    output: str | None = None
    flavor: Literal["alpha", "sigma"] = "sigma"
    tiny_models_dir: str | None = Field(None, description="create tiny random-weight models here if missing (demo)")
    reader: ReaderConfig = ReaderConfig()
    filter: FilterConfig = FilterConfig()
    caption: CaptionConfig
    t5: T5Config
    vae: VAEConfig
    writer: WriterConfig = WriterConfig()
    ray: RayConfig = RayConfig()


# Sizing and placement: changing them never changes the output, so they stay out of the fingerprint.
_NOT_FINGERPRINTED = {
    "input", "output", "ray", "resources", "device", "num_workers", "tiny_models_dir", "channels_last", "compile",
}  # fmt: skip


def _drop_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_keys(v) for k, v in value.items() if k not in _NOT_FINGERPRINTED}
    if isinstance(value, list):
        return [_drop_keys(v) for v in value]
    return value


def fingerprint(config: RunConfig) -> str:
    """Hash of everything that shapes the output (models, prompts, rules, lengths, buckets)."""
    canonical = json.dumps(_drop_keys(config.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (numbers, lists, null)."""
    dotted, sep, raw = assignment.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"--set expects dotted.key=value, got {assignment!r}")
    *parents, leaf = dotted.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw)


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {path}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe, apply ``--set`` overrides, validate.

    Relative local paths in the recipe are relative to the current directory: the repository root
    locally, and the job's working dir under ``ray job submit --working-dir .``.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping at the top level")
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_config(data)


def with_updates(config: RunConfig, **updates: Any) -> RunConfig:
    data = config.model_dump(mode="json")
    data.update(updates)
    return parse_config(data)
