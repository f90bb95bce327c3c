"""Dense captions from a vision-language model (LLaVA-1.5, LLaVA-NeXT, OneVision, the tiny LLaVA).

Every checkpoint goes through the same code: ``AutoProcessor`` + ``AutoModelForImageTextToText``, the
processor's own chat template, batched ``generate`` with left padding.

The prompt follows PixArt-alpha's captioning (reference/pixart_formats.md §4): when the input came with
an alt text, the model is asked to describe the image *given* that caption, else to describe it plainly.

Reproducibility: decoding is greedy by default, so a row's caption depends only on its image, its
prompt, the model and the numeric setup (device, dtype, kernels), not on the row's batch neighbours.
With ``do_sample`` each row is generated alone after seeding torch from its key, so a re-run on the same
machine and software repeats its caption; different GPUs, dtypes or library versions may not, and CUDA
kernels are not guaranteed deterministic.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import torch
from PIL import Image

from curation.config import CaptionConfig
from curation.models.loading import pretrained_kwargs, resolve_device, resolve_dtype
from curation.records import FAILED, Row, drop_pixels, get_pixels, mark
from curation.stages.base import Stage, error_detail

STATUS_OK = "ok"
STATUS_TRUNCATED = "truncated"  # generation hit max_new_tokens before the end-of-sequence token
STATUS_EMPTY = "empty"


def caption_prompt(config: CaptionConfig, alt: str | None) -> str:
    """The user instruction for one image: with its alt text when it has one."""
    alt = (alt or "").strip()
    if alt:
        return config.prompt_with_alt.format(alt=alt)
    return config.prompt


def chat_conversation(prompt: str) -> list[dict]:
    """One user turn holding the image and the instruction (the processor inserts its image tokens)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def row_seed(key: str) -> int:
    """A seed that depends only on the row's key (stable across runs, machines and batchings)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (2**63)


def merged_captions(existing: str | None, name: str, caption: str, alt: str | None) -> str:
    """The captions JSON: primary caption under ``name``, the alt text, and any earlier entries."""
    captions: dict[str, str] = {name: caption}
    if alt:
        captions["alt"] = alt
    for other, text in (json.loads(existing) if existing else {}).items():
        captions.setdefault(other, text)
    return json.dumps(captions, ensure_ascii=False)


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {eos}


class CaptionStage(Stage):
    """Writes ``captions`` (JSON) and ``caption_status`` for every OK row."""

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

    def setup(self) -> None:
        ref = self.config.model
        self.device = resolve_device(ref.device)
        self.dtype = resolve_dtype(ref.dtype, self.device)
        kwargs = pretrained_kwargs(ref)
        self.processor = _load_processor(ref.path, kwargs)
        self.model = _load_model(ref.path, self.dtype, kwargs).to(self.device)
        self.eos_ids = _eos_ids(self.model, self.processor.tokenizer)

    def process_rows(self, rows: list[Row]) -> None:
        images = self._prepared_images(rows)
        decoded = [row for row in rows if id(row) in images]

        def caption_batch(batch: list[Row]) -> None:
            self._caption(batch, [images[id(row)] for row in batch])

        # When sampling, every row is generated alone so its seed alone decides its caption.
        batch_size = 1 if self.config.do_sample else self.config.resources.batch_size
        for chunk in _chunks(decoded, batch_size):
            self.isolate_failures(chunk, caption_batch)
        for row in rows:
            drop_pixels(row, "caption")

    def _prepared_images(self, rows: list[Row]) -> dict[int, Image.Image]:
        """The prepared caption inputs; a row without one fails alone, without splitting its batch."""
        images: dict[int, Image.Image] = {}
        for row in rows:
            try:
                images[id(row)] = Image.fromarray(get_pixels(row, "caption"), "RGB")
            except Exception as error:  # missing or malformed prepared pixels
                mark(row, FAILED, self.name, "error", error_detail(error))
        return images

    def _caption(self, rows: list[Row], images: list[Image.Image]) -> None:
        prompts = [self._chat_text(caption_prompt(self.config, row["alt"])) for row in rows]
        if self.config.do_sample:
            torch.manual_seed(row_seed(rows[0]["key"]))
        new_tokens = self._generate(prompts, images)
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        for row, text, tokens in zip(rows, texts, new_tokens, strict=True):
            finished = any(int(token) in self.eos_ids for token in tokens)
            self._store(row, text.strip(), finished)

    def _chat_text(self, prompt: str) -> str:
        return self.processor.apply_chat_template(chat_conversation(prompt), add_generation_prompt=True)

    def _generate(self, prompts: list[str], images: list[Image.Image]) -> torch.Tensor:
        """Generated token ids only (the prompt columns removed), one row per prompt."""
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, self.dtype)
        sampling = {"temperature": self.config.temperature} if self.config.do_sample else {}
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=self.config.max_new_tokens, do_sample=self.config.do_sample, **sampling
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

    def _store(self, row: Row, caption: str, finished: bool) -> None:
        if not caption:
            row["caption_status"] = STATUS_EMPTY
            mark(row, FAILED, self.name, "empty_caption", "the model generated no text")
            return
        alt = (row["alt"] or "").strip() or None
        row["captions"] = merged_captions(row["captions"], self.config.name, caption, alt)
        row["caption_status"] = STATUS_OK if finished else STATUS_TRUNCATED


def _load_processor(path: str, kwargs: dict):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, **kwargs)
    tokenizer = processor.tokenizer
    # Batched generate appends new tokens on the right, so prompts must be padded on the left.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _load_model(path: str, dtype: torch.dtype, kwargs: dict):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
    return model.eval()
