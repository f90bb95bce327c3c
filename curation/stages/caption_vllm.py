"""The vLLM caption backend's Ray-agnostic half: rows → vLLM requests, vLLM answers → rows.

``pipelines/vllm_caption.py`` runs these requests through Ray's own ``ray.data.llm`` processor. Every
OK row becomes one request per caption job with what the Hugging Face backend (``curation.stages.caption``)
would give ``generate``: the prompt from the processor's chat template over ``chat_conversation``, the
prepared caption pixels as a PIL image, greedy decoding unless the job samples (then seeded from the row key
and job), the job's repetition penalty. The answers go through the same ``curation.caption_quality`` calls
(token ids decoded with the same tokenizer call, ``store_caption``, ``settle_row``), so equal tokens give
equal captions, statuses, token counts and flags.

The ``retry`` quality policy cannot feed a flagged caption back into the engine, so with it every job gets
its retry request (the quality policy's repetition penalty) up front, and the collector keeps that answer
for the captions the HF backend would have regenerated. The retry shares its prompt and image with the
first request, so vLLM's prefix cache serves its prefill.

A row travels through the processor pickled inside its first request, so the requests of one row may be
answered in any order, by any engine replica; ``CaptionCollector`` puts the row back together once every
request of that row has answered. Rows that are not OK, or whose pixels cannot be read (failed here, before
Ray's stages), travel as pass-through requests that the engine skips (see ``PASS_THROUGH``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import Any

from PIL import Image

from curation.caption_quality import GeneratedCaption, counted_flags, json_map, settle_row, store_caption
from curation.config import CaptionJob, CaptionQuality
from curation.records import FAILED, Row, drop_pixels, get_pixels, is_ok, mark
from curation.stages.base import error_detail
from curation.stages.caption import caption_prompt, row_seed

STAGE = "caption"
# ray.data.llm's stages hand a row whose ``__inference_error__`` is non-empty to their output without
# running it, and the processor's postprocess returns such a row as it is: how a row crosses it unserved.
ERROR_COLUMN = "__inference_error__"
PASS_THROUGH = "pass-through: not captioned"

KEY = "caption_key"
JOB = "caption_job"
RETRY = "caption_retry"
REQUEST_COUNT = "caption_requests"
PACKED_ROW = "caption_row"

Jobs = dict[str, CaptionJob]  # name -> job, the primary first (CaptionConfig.jobs)
Decode = Callable[[list[int]], str]  # generated token ids -> text
Answers = dict[tuple[str, bool], GeneratedCaption]  # (job name, retry) -> what was generated


def request_plan(jobs: Jobs, quality: CaptionQuality) -> list[tuple[str, bool]]:
    """The (job name, retry) requests of one row: every job, and every job's retry under the retry policy."""
    retries = [True] if quality.policy == "retry" else []
    return [(name, retry) for retry in [False, *retries] for name in jobs]


def sampling_params(job: CaptionJob, key: str, name: str, penalty: float | None) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields as the HF backend decodes: greedy, or seeded from the row key and job.

    Token ids come back undecoded (``detokenize`` off): ``generated_caption`` decodes them as the HF backend.
    """
    return {
        "max_tokens": job.max_new_tokens,
        "temperature": job.temperature if job.do_sample else 0.0,
        "seed": row_seed(key, name) if job.do_sample else None,
        "repetition_penalty": penalty or job.repetition_penalty or 1.0,
        "detokenize": False,
    }


def caption_image(row: Row) -> Image.Image:
    """The prepared caption input of a row (uint8 HWC pixels made by the filter stage) as a PIL image."""
    return Image.fromarray(get_pixels(row, "caption"), "RGB")


def pack_row(row: Row) -> bytes:
    return pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_row(data: bytes) -> Row:
    return pickle.loads(data)


def pass_through_request(row: Row) -> dict[str, Any]:
    """A request the engine skips, with every column a served request has (one Arrow schema for all)."""
    drop_pixels(row, "caption")
    return {
        KEY: row["key"],
        JOB: "",
        RETRY: False,
        REQUEST_COUNT: 1,
        PACKED_ROW: pack_row(row),
        "prompt": None,
        "multimodal_data": None,
        "sampling_params": None,
        ERROR_COLUMN: PASS_THROUGH,
    }


def build_requests(
    row: Row, jobs: Jobs, quality: CaptionQuality, chat_text: Callable[[str], str]
) -> list[dict[str, Any]]:
    """The vLLM requests of an OK row (``request_plan``); one pass-through request otherwise.

    A row whose caption pixels cannot be read fails here, so Ray's stages never see a bad image.
    """
    if not is_ok(row):
        return [pass_through_request(row)]
    try:
        image = caption_image(row)
    except Exception as error:  # missing or malformed prepared pixels
        mark(row, FAILED, STAGE, "error", error_detail(error))
        return [pass_through_request(row)]
    drop_pixels(row, "caption")
    plan = request_plan(jobs, quality)
    requests = []
    for index, (name, retry) in enumerate(plan):
        job = jobs[name]
        penalty = quality.retry_repetition_penalty if retry else None
        requests.append(
            {
                KEY: row["key"],
                JOB: name,
                RETRY: retry,
                REQUEST_COUNT: len(plan),
                PACKED_ROW: pack_row(row) if index == 0 else None,
                "prompt": chat_text(caption_prompt(job, row["alt"])),
                "multimodal_data": {"image": image},
                "sampling_params": sampling_params(job, row["key"], name, penalty),
                ERROR_COLUMN: "",
            }
        )
    return requests


def generated_caption(output: dict[str, Any], decode: Decode, eos_ids: set[int]) -> GeneratedCaption:
    """A processor output row (``generated_tokens`` or ``__inference_error__``) as the HF backend's result."""
    error = output.get(ERROR_COLUMN)
    if isinstance(error, str) and error:
        return GeneratedCaption("", 0, False, error=error)
    ids = [int(token) for token in output.get("generated_tokens") or []]
    end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
    return GeneratedCaption(decode(ids), len(ids) if end is None else end + 1, finished=end is not None)


def store_answers(row: Row, jobs: Jobs, quality: CaptionQuality, answers: Answers) -> Row:
    """Store the answers of an OK row in the order the HF backend generates: every job, the retries of the
    flagged captions (retry policy), then settle the row (missing/empty primary, reject policy)."""
    for name, job in jobs.items():
        if is_ok(row):  # a row whose earlier job failed is done
            store_caption(row, name, answers[name, False], caption_prompt(job, row["alt"]), quality)
    if quality.policy == "retry":
        for name, job in jobs.items():
            if is_ok(row) and counted_flags(json_map(row, "caption_flags").get(name, []), quality):
                store_caption(row, name, answers[name, True], caption_prompt(job, row["alt"]), quality)
    settle_row(row, STAGE, quality)
    return row


class CaptionCollector:
    """Reassembles rows from their requests' answers, which may arrive in any order and any batch."""

    def __init__(self, jobs: Jobs, quality: CaptionQuality, decode: Decode, eos_ids: set[int]) -> None:
        self.jobs = jobs
        self.quality = quality
        self.decode = decode
        self.eos_ids = eos_ids
        self.rows: dict[str, Row] = {}
        self.answers: dict[str, Answers] = {}

    @property
    def pending(self) -> int:
        """Rows still waiting for some of their requests."""
        return len(self.answers)

    def add(self, outputs: Iterable[dict[str, Any]]) -> list[Row]:
        """Take processor outputs; return the rows whose every request has now answered."""
        done = (self._add_one(output) for output in outputs)
        return [row for row in done if row is not None]

    def _add_one(self, output: dict[str, Any]) -> Row | None:
        if output.get(ERROR_COLUMN) == PASS_THROUGH:
            return unpack_row(output[PACKED_ROW])
        key = output[KEY]
        if isinstance(output.get(PACKED_ROW), bytes):
            self.rows[key] = unpack_row(output[PACKED_ROW])
        answers = self.answers.setdefault(key, {})
        answers[output[JOB], bool(output[RETRY])] = generated_caption(output, self.decode, self.eos_ids)
        if len(answers) < output[REQUEST_COUNT] or key not in self.rows:
            return None
        del self.answers[key]
        return store_answers(self.rows.pop(key), self.jobs, self.quality, answers)
