"""Captions from a vision-language model (LLaVA-1.5, LLaVA-NeXT, OneVision, the tiny LLaVA), one per job.

Every checkpoint goes through the same code: ``AutoProcessor`` + ``AutoModelForImageTextToText``, the
processor's own chat template, batched ``generate`` with left padding. Each caption job (``caption.jobs``:
``dense``, the primary, and e.g. ``short``) is a separate ``generate`` over the same prepared images, so a
second job costs a second prefill of every image.

The prompt follows PixArt-alpha's captioning (reference/pixart_formats.md §4): when the input came with
an alt text, the model is asked to describe the image *given* that caption, else to describe it plainly.

Reproducibility: decoding is greedy by default, so a row's caption depends only on its image, its
prompt, the model and the numeric setup (device, dtype, kernels), not on the row's batch neighbours.
With ``do_sample`` each row is generated alone after seeding torch from its key and job, so a re-run on
the same machine and software repeats its caption; different GPUs, dtypes or library versions may not.

Batches: rows are ordered by the number of image tokens their image will get (LLaVA-NeXT's AnyRes grid)
so a micro-batch pads little; on CUDA out-of-memory the batch is halved (down to one image, then only
that image fails) and later batches stay at the size that fitted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import torch
from PIL import Image

from curation.caption_quality import GeneratedCaption, counted_flags, json_map, settle_row, store_caption
from curation.config import CaptionConfig, CaptionJob
from curation.models.loading import resolve_device
from curation.models.wrappers import hub_kwargs, load_pretrained
from curation.records import FAILED, Row, drop_pixels, get_pixels, mark
from curation.stages.base import Stage, error_detail

Images = dict[int, Image.Image]  # id(row) -> prepared caption image
REGROW_AFTER = 16  # successful generate calls after which a batch size lowered by an OOM is doubled again


def caption_prompt(job: CaptionJob, alt: str | None) -> str:
    """The user instruction for one image: with its alt text when it has one (and the job has a template)."""
    alt = (alt or "").strip()
    if alt and job.prompt_with_alt:
        return job.prompt_with_alt.format(alt=alt)
    return job.prompt


def chat_conversation(prompt: str) -> list[dict]:
    """One user turn holding the image and the instruction (the processor inserts its image tokens)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def row_seed(key: str, job: str = "") -> int:
    """A seed that depends only on the row's key and the job (stable across runs, machines and batchings)."""
    return int.from_bytes(hashlib.sha256(f"{key}\0{job}".encode()).digest()[:8], "big") % (2**63)


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {eos}


class CaptionStage(Stage):
    """Writes ``captions`` {name: text} and the per-caption status / tokens / flags maps of every OK row."""

    name = "caption"
    uses_model = True

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__(config.resources)
        self.config = config
        self.processor = None  # loaded in setup(), inside the worker
        self.model = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.eos_ids: set[int] = set()
        self.batch_limit = config.resources.batch_size  # lowered after a CUDA out-of-memory, regrown after successes
        self.successes = 0

    def setup(self) -> None:
        from transformers import AutoModelForImageTextToText

        ref = self.config.model
        self.processor = _load_processor(ref.path, hub_kwargs(ref))
        extra = {"attn_implementation": "sdpa"} if resolve_device(ref.device).type == "cuda" else {}
        self.model, self.device, self.dtype = load_pretrained(AutoModelForImageTextToText, ref, **extra)
        self.eos_ids = _eos_ids(self.model, self.processor.tokenizer)

    def process_rows(self, rows: list[Row]) -> None:
        images = self._prepared_images(rows)
        live = sorted((row for row in rows if id(row) in images), key=lambda row: self._token_group(images[id(row)]))
        for name, job in self.config.jobs.items():
            self._run_job(live, images, name, job)
        if self.config.quality.policy == "retry":
            self._retry_flagged(live, images)
        for row in live:
            settle_row(row, self.name, self.config.quality)
        for row in rows:
            drop_pixels(row, "caption")

    def _prepared_images(self, rows: list[Row]) -> Images:
        """The prepared caption inputs; a row without one fails alone, without splitting its batch."""
        images: Images = {}
        for row in rows:
            try:
                images[id(row)] = Image.fromarray(get_pixels(row, "caption"), "RGB")
            except Exception as error:  # missing or malformed prepared pixels
                mark(row, FAILED, self.name, "error", error_detail(error))
        return images

    def _token_group(self, image: Image.Image) -> tuple[int, int]:
        """Rows with equal groups get the same number of image tokens (AnyRes grid); (0, 0) for fixed-size models."""
        pinpoints = getattr(self.processor.image_processor, "image_grid_pinpoints", None) if self.processor else None
        if not pinpoints:
            return (0, 0)
        from transformers.image_processing_utils import select_best_resolution

        return tuple(select_best_resolution((image.height, image.width), pinpoints))

    def _run_job(self, rows: list[Row], images: Images, name: str, job: CaptionJob, penalty=None) -> None:
        # When sampling, every row is generated alone so its seed alone decides its caption.
        size = 1 if job.do_sample else self.batch_limit
        rows = [row for row in rows if row["status"] == "ok"]  # a row whose earlier job failed is done
        for chunk in _chunks(rows, size):
            results = self._generate_safely(chunk, [images[id(row)] for row in chunk], name, job, penalty)
            for row, result in zip(chunk, results, strict=True):
                store_caption(row, name, result, caption_prompt(job, row["alt"]), self.config.quality)

    def _retry_flagged(self, rows: list[Row], images: Images) -> None:
        penalty = self.config.quality.retry_repetition_penalty
        for name, job in self.config.jobs.items():
            flagged = [row for row in rows if self._counted(row, name)]
            if flagged:
                self._run_job(flagged, images, name, job, penalty)

    def _counted(self, row: Row, name: str) -> list[str]:
        return counted_flags(json_map(row, "caption_flags").get(name, []), self.config.quality)

    def _generate_safely(
        self, rows: list[Row], images: list[Image.Image], name: str, job: CaptionJob, penalty: float | None
    ) -> list[GeneratedCaption]:
        """One result per row: halves the batch on CUDA OOM, isolates any other failing row."""
        try:
            results = self._generate(rows, images, name, job, penalty)
        except torch.cuda.OutOfMemoryError as error:
            self.successes = 0
            if len(rows) == 1:
                return [GeneratedCaption("", 0, False, error=f"CUDA out of memory at batch size 1: {error}")]
            torch.cuda.empty_cache()
            self.batch_limit = max(1, len(rows) // 2)
        except Exception as error:
            if len(rows) == 1:
                return [GeneratedCaption("", 0, False, error=error_detail(error))]
            return [self._generate_safely([r], [i], name, job, penalty)[0] for r, i in zip(rows, images, strict=True)]
        else:
            self._regrow_batch()
            return results
        half = self.batch_limit
        return self._generate_safely(rows[:half], images[:half], name, job, penalty) + self._generate_safely(
            rows[half:], images[half:], name, job, penalty
        )

    def _regrow_batch(self) -> None:
        """One oversized image must not keep the batch small for the rest of the job."""
        self.successes += 1
        if self.successes >= REGROW_AFTER and self.batch_limit < self.config.resources.batch_size:
            self.batch_limit = min(self.config.resources.batch_size, self.batch_limit * 2)
            self.successes = 0

    def _generate(
        self, rows: list[Row], images: list[Image.Image], name: str, job: CaptionJob, penalty: float | None
    ) -> list[GeneratedCaption]:
        prompts = [self._chat_text(caption_prompt(job, row["alt"])) for row in rows]
        if job.do_sample:
            torch.manual_seed(row_seed(rows[0]["key"], name))
        new_tokens = self._run_generate(prompts, images, job, penalty)
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [self._result(text, tokens) for text, tokens in zip(texts, new_tokens, strict=True)]

    def _result(self, text: str, tokens: torch.Tensor) -> GeneratedCaption:
        # A row that ended early is padded after its end-of-sequence token; one that did not ran the full length.
        ids = [int(token) for token in tokens]
        end = next((i for i, token in enumerate(ids) if token in self.eos_ids), None)
        return GeneratedCaption(text, len(ids) if end is None else end + 1, finished=end is not None)

    def _chat_text(self, prompt: str) -> str:
        return self.processor.apply_chat_template(chat_conversation(prompt), add_generation_prompt=True)

    def _run_generate(
        self, prompts: list[str], images: list[Image.Image], job: CaptionJob, penalty: float | None
    ) -> torch.Tensor:
        """Generated token ids only (the prompt columns removed), one row per prompt."""
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, self.dtype)
        settings = {"temperature": job.temperature} if job.do_sample else {}
        if penalty or job.repetition_penalty:
            settings["repetition_penalty"] = penalty or job.repetition_penalty
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=job.max_new_tokens, do_sample=job.do_sample, **settings
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu()
        self.metrics.add_model_time(time.perf_counter() - started, self._flops(inputs, new_tokens))
        return new_tokens

    def _flops(self, inputs, new_tokens: torch.Tensor) -> float | None:
        def compute() -> float:
            from curation.models.flops import llava_generate_flops

            batch, prompt_length = inputs["input_ids"].shape
            pixels = inputs.get("pixel_values")
            crops = pixels.shape[0] * pixels.shape[1] if pixels is not None and pixels.ndim == 5 else None
            return llava_generate_flops(self.model.config, batch, prompt_length, new_tokens.shape[1], crops)

        return self.metrics.count_flops(compute)


def _load_processor(path: str, kwargs: dict):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, **kwargs)
    tokenizer = processor.tokenizer
    # Batched generate appends new tokens on the right, so prompts must be padded on the left.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor
