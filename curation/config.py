"""Typed run configuration: YAML recipe + ``--set`` overrides, validated, fingerprinted.

Unknown keys anywhere are an error that names the key's dotted path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe that cannot be used, with the offending key path in the message."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(Strict):
    """Per-worker resources and pool size of one stage (never detected on the driver)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    num_workers: int | Literal["auto"] = Field(
        1, description="fixed actor-pool size (model stages) or task concurrency; auto: what the cluster fits"
    )

    @field_validator("num_workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("num_workers must be >= 1 or 'auto'")
        return value

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
    trust_remote_code: bool = Field(False, description="run the repo's own model code (only for repos you trust)")


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
    """Each rule rejects with its own reason code (in parentheses); content rules measure a gray view of the
    image with its longest side at most 256 (``curation.stages.filter_checks.VIEW_SIDE``)."""

    resources: Resources = Resources(num_cpus=1, num_workers=2, batch_size=32)
    max_bytes: int = Field(100 * 2**20, ge=1, description="(file_size) larger inputs are refused before decoding")
    allowed_formats: list[str] | None = Field(
        None,
        description="(format_not_allowed) Pillow format names, e.g. [JPEG, PNG, WEBP]; None: every format the "
        "installed Pillow decodes (formats other than JPEG/PNG/WebP are stored as lossless PNG)",
    )
    max_pixels: int = Field(178_956_970, ge=1, description="(decompression_bomb) guard (PIL's default limit)")
    min_side: int = Field(256, ge=1, description="(too_small) shortest side")
    min_pixels: int = Field(0, ge=0, description="(too_few_pixels) min width * height; 0: off")
    max_aspect_ratio: float = Field(4.0, ge=1.0, description="(aspect_ratio) max of h/w and w/h")
    max_train_pixels: int | None = Field(
        None, ge=1, description="(too_many_pixels) training cap, separate from the bomb guard max_pixels; None: off"
    )
    too_many_pixels_policy: Literal["downscale", "reject"] = Field(
        "downscale", description="downscale: store a lossless PNG downscaled to max_train_pixels; reject"
    )
    animated_policy: Literal["first_frame", "reject"] = Field("first_frame", description="(animated)")
    max_transparent_fraction: float = Field(
        0.95, ge=0.0, le=1.0, description="(transparent) max of 1 - mean(alpha)/255; 1: off"
    )
    min_gray_std: float = Field(2.0, ge=0.0, description="(blank) min std of the gray view (0..255); 0: off")
    min_laplacian_var: float = Field(
        5.0, ge=0.0, description="(blurry) min variance of the 4-neighbour Laplacian of the gray view; 0: off"
    )
    grayscale_policy: Literal["keep", "reject"] = Field("keep", description="(grayscale)")
    grayscale_max_chroma: int = Field(
        2, ge=0, le=255, description="grayscale: no view pixel has max(R,G,B) - min(R,G,B) above this"
    )
    draft: bool = Field(
        True,
        description="reduced-scale JPEG decode (>= 2x every prepared size) when the original is kept, or to "
        "the stored size when downscaling",
    )

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from PIL import Image  # only configs that set an allow-list pay for the plugin registry

        Image.init()
        aliases = {"JPG": "JPEG", "TIF": "TIFF", "JP2": "JPEG2000", "J2K": "JPEG2000"}
        names = [aliases.get(name.upper(), name.upper()) for name in value]
        unknown = [name for name in names if name not in Image.OPEN]
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; this Pillow opens {sorted(Image.OPEN)}")
        return sorted(set(names))


DENSE_PROMPT = "Describe this image and its style in a very detailed manner."
DENSE_PROMPT_WITH_ALT = (
    'Given the caption of this image "{alt}", describe this image and its style in a very detailed manner.'
)
SHORT_PROMPT = "Describe this image in one short sentence."
SHORT_PROMPT_WITH_ALT = 'Given the caption of this image "{alt}", describe this image in one short sentence.'
PRIMARY_CAPTION = "dense"


class CaptionJob(Strict):
    """One caption written for every image: its instruction and decoding settings."""

    prompt: str = DENSE_PROMPT
    prompt_with_alt: str | None = Field(DENSE_PROMPT_WITH_ALT, description="used when the input has alt text")
    max_new_tokens: int = Field(300, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.2, gt=0)
    repetition_penalty: float | None = Field(None, gt=0, description="None: the model's default (1.0)")


# Default jobs per flavor: PixArt-Σ trains on two captions per image (real_prompt_ratio), α on one.
DEFAULT_JOBS: dict[str, dict[str, dict[str, Any]]] = {
    "sigma": {
        "dense": {},
        "short": {"prompt": SHORT_PROMPT, "prompt_with_alt": SHORT_PROMPT_WITH_ALT, "max_new_tokens": 60},
    },
    "alpha": {"dense": {}},
}
_FLAVOR_JOB_NAMES = frozenset(name for jobs in DEFAULT_JOBS.values() for name in jobs)
_MOVED_CAPTION_KEYS = ("name", "prompt", "prompt_with_alt", "max_new_tokens", "do_sample", "temperature")


class CaptionQuality(Strict):
    """Flags every caption; the policy decides what a flagged caption costs its sample."""

    policy: Literal["keep", "retry", "reject"] = Field(
        "keep",
        description="keep: flags only; retry: regenerate flagged captions once with repetition_penalty; "
        "reject: a flagged caption rejects its sample (reason caption_quality)",
    )
    retry_repetition_penalty: float = Field(1.3, gt=1.0)
    reject_flags: list[str] = Field(
        ["repetition", "too_short", "echoes_prompt"], description="flags that count for retry/reject"
    )
    min_words: int = Field(3, ge=0, description="fewer words: too_short")
    max_words: int = Field(400, ge=1, description="more words: too_long")
    repeated_ngram: int = Field(
        3, ge=2, description="an n-gram of this length seen max_ngram_repeats times: repetition"
    )
    max_ngram_repeats: int = Field(3, ge=2)
    min_unique_ratio: float = Field(0.3, ge=0, le=1, description="unique words / words below this (>= 12 words)")


class CaptionConfig(Strict):
    model: ModelRef
    backend: Literal["hf", "vllm"] = "hf"
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=16)
    jobs: dict[str, CaptionJob] = Field(
        default_factory=lambda: {name: CaptionJob(**job) for name, job in DEFAULT_JOBS["sigma"].items()},
        description="captions written per image, {name: job}; 'dense' is the primary; default set by flavor",
    )
    quality: CaptionQuality = CaptionQuality()
    max_image_side: int = Field(1024, ge=64, description="images are shrunk to this before the processor")

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _MOVED_CAPTION_KEYS:
                if key in data:
                    raise ValueError(
                        f"caption.{key} moved into the caption jobs: set caption.jobs.<name>.{key} "
                        f"(e.g. caption.jobs.dense.{key}); 'name' is the job's key"
                    )
        return data

    @field_validator("jobs")
    @classmethod
    def _primary_first(cls, jobs: dict[str, CaptionJob]) -> dict[str, CaptionJob]:
        if PRIMARY_CAPTION not in jobs:
            raise ValueError(f"the primary caption job {PRIMARY_CAPTION!r} is required")
        if "alt" in jobs:
            raise ValueError("'alt' is the input's own caption, not a job name")
        for name in jobs:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"caption job name {name!r}: use lowercase letters, digits and _ (it names files)")
        return {PRIMARY_CAPTION: jobs[PRIMARY_CAPTION], **jobs}


# Flavor-specific values of PixArt-α and PixArt-Σ. A recipe names its ``flavor`` and writes only what it sets
# deliberately; every key listed here that it leaves out comes from its flavor (``apply_flavor_defaults``).
FLAVOR_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "alpha": {
        "filter": {"max_aspect_ratio": 4.0},
        "t5": {"max_length": 120, "caption_cleaning": "alpha"},
        "vae": {"scale_factor": 0.18215},
    },
    "sigma": {
        "filter": {"max_aspect_ratio": 4.5},
        "t5": {"max_length": 300, "caption_cleaning": "none"},
        "vae": {"scale_factor": 0.13025},
    },
}
SIGMA_REPO = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
# The models of each flavor on the Hugging Face hub (the presets' weights).
HUB_MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "alpha": {
        "caption": {"path": "llava-hf/llava-1.5-7b-hf"},
        "t5": {"path": "PixArt-alpha/PixArt-XL-2-1024-MS"},
        "vae": {"path": "stabilityai/sd-vae-ft-ema"},
    },
    "sigma": {
        "caption": {"path": "llava-hf/llava-v1.6-mistral-7b-hf"},
        "t5": {"path": SIGMA_REPO},
        "vae": {"path": SIGMA_REPO, "subfolder": "vae"},
    },
}
MODEL_SECTIONS_WITH_DEFAULTS = ("caption", "t5", "vae")


def tiny_flavor_models(directory: str, flavor: str) -> dict[str, dict[str, Any]]:
    """The flavor's models among the tiny random-weight ones ``curate tiny-models`` writes in ``directory``."""
    pipeline = f"{directory.rstrip('/')}/pixart_{flavor}"
    return {
        "caption": {"path": f"{directory.rstrip('/')}/llava"},
        "t5": {"path": pipeline},
        "vae": {"path": pipeline, "subfolder": "vae"},
    }


def flavor_models(flavor: str, tiny_models_dir: str | None) -> dict[str, dict[str, Any]]:
    """The model set of a recipe: the tiny folders when it has a ``tiny_models_dir`` (the demo), else the hub ids."""
    return tiny_flavor_models(tiny_models_dir, flavor) if tiny_models_dir else HUB_MODELS[flavor]


def apply_flavor_defaults(data: dict[str, Any]) -> None:
    """Fill what a recipe leaves out from its flavor, in place; every key the recipe sets wins.

    - ``FLAVOR_DEFAULTS``: T5 length and caption cleaning, VAE scale factor, max aspect ratio;
    - each model stage's ``model`` field by field (``flavor_models``): a recipe that sets only ``vae.model.dtype``
      keeps the flavor's path and subfolder; ``subfolder: null`` drops the flavor's subfolder;
    - ``caption.jobs`` (``resolve_caption_jobs``).
    An unknown flavor is left for validation to report.
    """
    flavor = data.get("flavor", "sigma")
    if flavor not in FLAVOR_DEFAULTS:
        return
    models = flavor_models(flavor, data.get("tiny_models_dir"))
    for section_name in {*FLAVOR_DEFAULTS[flavor], *MODEL_SECTIONS_WITH_DEFAULTS}:
        section = data.setdefault(section_name, {})
        if not isinstance(section, dict):
            continue
        for key, value in FLAVOR_DEFAULTS[flavor].get(section_name, {}).items():
            section.setdefault(key, value)
        if section_name in models:
            model = section.setdefault("model", {})
            if isinstance(model, dict):
                section["model"] = {**models[section_name], **model}
    resolve_caption_jobs(data, flavor)


def resolve_caption_jobs(data: dict[str, Any], flavor: str = "sigma") -> None:
    """Fill ``caption.jobs`` from the flavor's defaults: absent → the flavor's jobs; a job given in part
    (e.g. by ``--set caption.jobs.dense.max_new_tokens=200``) → the flavor's job of that name with those
    fields changed; a job set to null → removed. Settings without a prompt for a job that only another flavor
    has (``short`` under α) are that flavor's tuning and are left out, so one recipe serves both flavors; a new
    job gives its ``prompt``."""
    caption = data.get("caption")
    if not isinstance(caption, dict):
        return
    defaults = DEFAULT_JOBS[flavor]
    given = caption.get("jobs")
    if given is None:
        caption["jobs"] = {name: dict(job) for name, job in defaults.items()}
        return
    if not isinstance(given, dict):
        return
    resolved = {name: dict(job) for name, job in defaults.items()}
    for name, job in given.items():
        if job is None:
            resolved.pop(name, None)
        elif isinstance(job, dict):
            if name not in defaults and name in _FLAVOR_JOB_NAMES and "prompt" not in job:
                continue
            resolved[name] = {**resolved.get(name, {}), **job}
        else:
            resolved[name] = job
    caption["jobs"] = resolved


class T5Config(Strict):
    model: ModelRef  # points at the repo root; the subfolders below hold tokenizer and encoder
    tokenizer_subfolder: str | None = "tokenizer"
    encoder_subfolder: str | None = "text_encoder"
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=64)
    max_length: int = Field(300, ge=1, description="120 for PixArt-alpha, 300 for PixArt-sigma")
    caption_cleaning: Literal["none", "alpha"] = "none"
    captions: list[str] | None = Field(
        None, description="captions to encode (names of caption jobs, or 'alt'); default: every caption job"
    )


class VAEConfig(Strict):
    model: ModelRef
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=8)
    aspect_ratios: Literal[256, 512, 1024, 2048] = 1024
    interpolation: Literal["bicubic", "lanczos"] = "bicubic"
    scale_factor: float = Field(0.13025, description="recorded for training; latents are stored unscaled")
    channels_last: bool = Field(True, description="NHWC convolutions (faster on CPU and on tensor cores)")
    compile: bool = Field(False, description="torch.compile the encoder (CUDA; pays a warm-up per bucket shape)")
    cpu_winograd: bool = Field(
        True,
        description="on CPU in float32: 3x3 convolutions through NNPACK's Winograd transform (~1.9x faster "
        "than the direct method; float16 latents within 2 ulps of it)",
    )
    cpu_image_parallel: bool = Field(
        True,
        description="on CPU with several torch threads: one image per thread, each single-threaded, instead of "
        "every convolution split over all threads (no barrier after each operator; measured faster)",
    )


class ScoreRule(Strict):
    """Thresholds on one score: a sample scoring below ``min`` or above ``max`` is rejected (reason: its name)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ScoreRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


AESTHETIC_WEIGHTS_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticScoreConfig(ScoreRule):
    """LAION's improved aesthetic predictor: an MLP on L2-normalised CLIP ViT-L/14 image embeddings (~1-10)."""

    model: ModelRef | None = Field(
        None, description="the MLP's state dict: a .pth/.safetensors file, a folder or a hub repo holding weights_file"
    )
    weights_file: str = Field(AESTHETIC_WEIGHTS_FILE, description="file name inside a folder or hub repo")


class ClassifierScoreConfig(ScoreRule):
    """An image classifier loadable with ``AutoModelForImageClassification``; the score is P(positive_label)."""

    model: ModelRef | None = None
    positive_label: str | int | None = Field(
        None,
        description="the positive class: a name in the model's id2label (case-insensitive) or an index; "
        "None: the label named like the score (nsfw / watermark)",
    )


class ClipSimilarityConfig(ScoreRule):
    """Cosine of the CLIP image and alt-text embeddings; rows without alt text get no score."""

    enabled: bool = False


SCORE_NAMES = ("aesthetic", "nsfw", "watermark", "clip_similarity")


class ScorersConfig(Strict):
    """Optional model scores (``scores`` in the sample json, ``score_<name>`` in the index), before captioning."""

    clip: ModelRef | None = Field(
        None, description="CLIP for aesthetic and clip_similarity (ViT-L/14: openai/clip-vit-large-patch14)"
    )
    aesthetic: AestheticScoreConfig = AestheticScoreConfig()
    nsfw: ClassifierScoreConfig = ClassifierScoreConfig()
    watermark: ClassifierScoreConfig = ClassifierScoreConfig()
    clip_similarity: ClipSimilarityConfig = ClipSimilarityConfig()
    image_side: int = Field(224, ge=16, description="side of the square view the filter prepares (CLIP's geometry)")
    resources: Resources = Resources(num_cpus=1, num_gpus=1, num_workers=1, batch_size=64)

    @model_validator(mode="after")
    def _clip_when_needed(self) -> ScorersConfig:
        if self.clip is None and ({"aesthetic", "clip_similarity"} & set(self.enabled)):
            raise ValueError("scorers.aesthetic and scorers.clip_similarity need scorers.clip (a CLIP model)")
        return self

    @property
    def enabled(self) -> list[str]:
        """The enabled scores, in ``SCORE_NAMES`` order (also the order rejection reasons are checked in)."""
        on = {
            "aesthetic": self.aesthetic.model is not None,
            "nsfw": self.nsfw.model is not None,
            "watermark": self.watermark.model is not None,
            "clip_similarity": self.clip_similarity.enabled,
        }
        return [name for name in SCORE_NAMES if on[name]]

    def rule(self, name: str) -> ScoreRule:
        return getattr(self, name)

    def model_refs(self) -> dict[str, ModelRef]:
        """The models the enabled scores load, {role: ref} (CLIP once, shared)."""
        enabled = self.enabled
        refs = {name: self.rule(name).model for name in ("aesthetic", "nsfw", "watermark") if name in enabled}
        if self.clip is not None and {"aesthetic", "clip_similarity"} & set(enabled):
            refs = {"clip": self.clip, **refs}
        return refs


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
    allow_autoscaling: bool = Field(
        False, description="pools the cluster cannot place yet are a warning, not an error (the cluster will grow)"
    )


class DedupConfig(Strict):
    """Global deduplication before any model stage (``pipelines/dedup.py``). Inputs that reuse another
    input's key are always rejected (``duplicate_key``); these switches are about content.
    """

    enabled: bool = Field(True, description="hash every input and reject duplicates before the main pass")
    exact: bool = Field(True, description="identical bytes (sha256): reason `duplicate`")
    near: bool = Field(True, description="pHash within near_duplicate_radius: reason `near_duplicate`")
    near_duplicate_radius: int = Field(6, ge=0, le=16, description="max Hamming distance of 64-bit pHashes")
    band_key_blocks: int = Field(
        2,
        ge=1,
        le=4,
        description="pHash blocks per band key: radius + this many blocks, C(blocks, this) bands; 1 = plain "
        "radius + 1 banding. Exact recall either way; 2 checks far fewer candidate pairs",
    )


class RunSettings(Strict):
    """How a run judges itself (not how it computes: stays out of the fingerprint)."""

    max_failed_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="counts.failed / counts.input above this: the run still writes everything it can, manifest "
        "included, then `curate build` exits non-zero (errors with tracebacks: DIR/_run/errors-*.jsonl)",
    )


class RunConfig(Strict):
    @model_validator(mode="before")
    @classmethod
    def _flavor_defaults(cls, data: Any) -> Any:  # see apply_flavor_defaults
        if isinstance(data, dict):
            data = copy.deepcopy(data)
            apply_flavor_defaults(data)
        return data

    input: list[str] = []
    output: str | None = None
    flavor: Literal["alpha", "sigma"] = "sigma"
    tiny_models_dir: str | None = Field(None, description="create tiny random-weight models here if missing (demo)")
    reader: ReaderConfig = ReaderConfig()
    filter: FilterConfig = FilterConfig()
    caption: CaptionConfig
    t5: T5Config
    vae: VAEConfig
    scorers: ScorersConfig = ScorersConfig()
    writer: WriterConfig = WriterConfig()
    ray: RayConfig = RayConfig()
    run: RunSettings = RunSettings()
    dedup: DedupConfig = DedupConfig()


# Sizing, placement and run policy (``run``): changing them never changes the output, so they stay out of
# the fingerprint.
_NOT_FINGERPRINTED = {
    "input", "output", "ray", "resources", "device", "num_workers", "tiny_models_dir", "channels_last", "compile",
    "cpu_winograd", "cpu_image_parallel",  # how the VAE runs on CPU: the same latents within float rounding
    "run", "band_key_blocks",  # how candidate pairs are found: exact recall whatever its value
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


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The config class a field holds (unwrapping ``X | None``), and whether it holds ``dict[str, X]``."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return _section_model(typing.get_args(annotation)[1])[0], True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model, keyed = _section_model(arg)
            if model is not None:
                return model, keyed
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def valid_keys(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> list[str] | None:
    """The keys allowed beside the last part of ``loc`` (an error location), or None when unknown."""
    model: type[BaseModel] | None = root or RunConfig
    parts = list(loc[:-1])
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        model, keyed = _section_model(field.annotation)
        if keyed and parts:
            parts.pop(0)  # the dict key (a caption job's name)
        elif keyed:
            return None
    return list(model.model_fields) if model is not None else None


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            keys = valid_keys(item["loc"])
            message = f"unknown key (valid: {', '.join(keys)})" if keys else "unknown key"
        lines.append(f"{path}: {message}")
    return "invalid config: " + "; ".join(lines)


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
