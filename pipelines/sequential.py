"""The pipeline without Ray: the same read units, stages and shards as ``pipelines.t2i.run``, in one process.

Rows stream through the stages back to back: each stage receives blocks of its own ``rows_per_block`` (as
on Ray), runs ``process_batch`` and passes the rows on; the pipeline's own ``ShardSink`` writes them as one
write task (shards of ``samples_per_shard``, index, rejects). Every stage is timed and counted with the
figures the Ray adapter records, so the manifests' ``stages`` of the two runners compare directly (here
``convert_seconds`` is 0: rows stay Python dicts between stages).

It is the baseline of the Ray pipeline's overhead in ``benchmarks/pipeline.py`` and a Ray-free way to run
a small build under a debugger.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import torch

from curation.config import RunConfig, fingerprint
from curation.io import readers, writer
from curation.models.loading import check_model_paths, model_records, resolve_numerics
from curation.models.tiny import ensure_tiny_models
from curation.records import Row, is_ok, rows_to_table
from curation.stages.base import Stage
from curation.stats import StageStats, summarize_idle
from pipelines import t2i
from pipelines.read import READ_CHUNK_ROWS
from pipelines.t2i import stage_factories

WORKER = f"{os.uname().nodename}:{os.getpid()}"  # as the Ray adapter names a worker


def run(config: RunConfig, overwrite: bool = False) -> dict:
    """Execute the pipeline in this process and return the manifest (the one ``t2i.run`` writes, + ``runner``)."""
    if not config.input or not config.output:
        raise ValueError("the sequential runner needs `input` and `output`")
    if config.tiny_models_dir:
        ensure_tiny_models(config.tiny_models_dir)
    check_model_paths([config.caption.model, config.t5.model, config.vae.model])
    started = datetime.now(UTC).isoformat(timespec="seconds")
    run_fingerprint = fingerprint(config)
    recipe, config = config, resolve_numerics(config, torch.cuda.device_count())
    models = model_records(config)
    writer.prepare_output(config.output, run_fingerprint, overwrite, models)
    plan = readers.plan_inputs(config.input, config.reader)
    done = writer.done_keys(config.output)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    stats = StageStats()
    stages = [set_up(factory(), stats) for factory in stage_factories(config)]
    rows: Iterable[Row] = read_rows(plan.units, config, done, stats)
    for stage in stages:
        rows = run_stage(stage, rows, stats)
    write_rows(rows, config, run_id, stats)
    snapshot = stats.snapshot()
    fields = t2i._manifest_fields(recipe, run_fingerprint, run_id, started, models)
    flow = ["read", *(stage.name for stage in stages), "write"]
    fields.update(
        stages={name: snapshot["stages"].get(name) or summarize_idle() for name in flow},
        inputs={**snapshot["inputs"], **plan.counts()},
        runner="sequential",
    )
    manifest = writer.finalize(config.output, fields, inputs_read=snapshot["inputs"].get("input", 0))
    t2i.check_failures(manifest, config.run.max_failed_fraction, config.output)
    return manifest


def set_up(stage: Stage, stats: StageStats) -> Stage:
    start = time.perf_counter()
    stage.setup()
    stats.record(stage.name, {"setup_seconds": time.perf_counter() - start})
    return stage


def read_rows(units: list[dict], config: RunConfig, done: set[str], stats: StageStats) -> Iterator[Row]:
    """Rows of every read unit in order, skipping keys an earlier run finished; counted and timed per unit."""
    for unit in units:
        started, busy, outcomes = time.time(), 0.0, Counter()
        unit_rows = readers.iter_unit(unit, config.reader, max_bytes=config.filter.max_bytes)
        while True:
            start = time.perf_counter()
            row = next(unit_rows, None)
            busy += time.perf_counter() - start  # reading only: not the time the stages hold the row
            if row is None:
                break
            outcomes["already_done" if row["key"] in done else row["status"]] += 1
            if row["key"] not in done:
                yield row
        read = sum(outcomes.values())
        stats.record_inputs(unit["unit_id"], {"input": read, "already_done": outcomes["already_done"]})
        figures = {"rows_in": read, "rows_out": dict(outcomes), "seconds": busy, "worker": WORKER}
        stats.record("read", figures | {"started_at": started, "ended_at": time.time()})


def blocks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    block: list[Row] = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def run_stage(stage: Stage, rows: Iterable[Row], stats: StageStats) -> Iterator[Row]:
    """``stage.process_batch`` on blocks of ``stage.rows_per_block`` rows, timed as the Ray adapter times it."""
    for block in blocks(rows, stage.rows_per_block):
        started_at, start = time.time(), time.perf_counter()
        live = [row for row in block if is_ok(row)]
        out = stage.process_batch(block)
        figures = {
            "rows_in": len(live),
            "rows_out": dict(Counter(row["status"] for row in live)),
            "seconds": time.perf_counter() - start,
            "convert_seconds": 0.0,
            "started_at": started_at,
            "ended_at": time.time(),
            "worker": WORKER,
            **stage.metrics.take(),
        }
        stats.record(stage.name, figures)
        yield from out


def write_rows(rows: Iterable[Row], config: RunConfig, run_id: str, stats: StageStats) -> None:
    """The rows through the Ray pipeline's own ``ShardSink.write`` (as one write task): the same shards,
    index, rejects and error files. Its blocks are Arrow tables, as on Ray (the same conversions). The sink
    records its figures as on Ray; the time it waits for blocks (the stages computing them) is not its own.
    """
    recorder = SimpleNamespace(record=SimpleNamespace(remote=stats.record))  # a StatsRecorder handle's shape
    sink = writer.ShardSink(config.output, config.writer.samples_per_shard, run_id, recorder)
    tables = (rows_to_table(block) for block in blocks(rows, READ_CHUNK_ROWS))
    sink.write(tables, SimpleNamespace(task_idx=0))
