"""Adapter from Ray-agnostic stages to Ray Data operators, with per-stage statistics.

Model stages become a fixed-size actor pool (``setup()`` once per actor, weights held for the whole
job); CPU stages become tasks. Blocks are Arrow tables with ``ROW_SCHEMA``. A stage receives
``stage.rows_per_block`` rows per call (Ray's block) and micro-batches them for its model itself
(``resources.batch_size``).

Every call is timed and counted here, not in the stages, and sent without waiting to one
``StatsRecorder`` actor per run, which the driver reads at the end (``curation.stats``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from curation.records import is_ok, rows_to_table, table_to_rows
from curation.stages.base import Stage
from curation.stats import StageStats

StageFactory = Callable[[], Stage]


@ray.remote(num_cpus=0)
class StatsRecorder:
    """Collects the per-call figures of every stage of one run (a few hundred bytes per call)."""

    def __init__(self) -> None:
        self.stats = StageStats()

    def record(self, stage: str, figures: dict) -> None:
        self.stats.record(stage, figures)

    def record_inputs(self, unit_id: str, counts: dict) -> None:
        self.stats.record_inputs(unit_id, counts)

    def snapshot(self) -> dict:
        return self.stats.snapshot()


def timed_batch(stage: Stage, table: pa.Table) -> tuple[pa.Table, dict]:
    """Run one call of ``stage`` and measure it: rows in (OK rows entering), rows out per status, seconds."""
    started_at = time.time()
    start = time.perf_counter()
    rows = table_to_rows(table)
    live = [row for row in rows if is_ok(row)]
    compute_start = time.perf_counter()
    rows = stage.process_batch(rows)
    compute_seconds = time.perf_counter() - compute_start
    out = rows_to_table(rows)
    figures = {
        "rows_in": len(live),
        "rows_out": dict(Counter(row["status"] for row in live)),
        "seconds": compute_seconds,
        "convert_seconds": time.perf_counter() - start - compute_seconds,
        "started_at": started_at,
        "ended_at": time.time(),
        "worker": f"{os.uname().nodename}:{os.getpid()}",
        **stage.metrics.take(),
    }
    return out, figures


class StageActor:
    """Holds one stage instance (and its model) for the lifetime of a Ray actor."""

    def __init__(self, factory: StageFactory, recorder) -> None:
        start = time.perf_counter()
        self.stage = factory()
        self.stage.setup()
        self.recorder = recorder
        self.device = describe_device(self.stage)
        recorder.record.remote(self.stage.name, {"setup_seconds": time.perf_counter() - start, **self.device})

    def __call__(self, table: pa.Table) -> pa.Table:
        out, figures = timed_batch(self.stage, table)
        self.recorder.record.remote(self.stage.name, figures)
        return out


def run_stage_task(table: pa.Table, factory: StageFactory, recorder) -> pa.Table:
    stage = factory()
    stage.setup()
    out, figures = timed_batch(stage, table)
    recorder.record.remote(stage.name, figures)
    return out


def describe_device(stage: Stage) -> dict:
    """Device name and dtype of a model stage (for MFU), as the worker resolved them."""
    device = getattr(stage, "device", None)
    if device is None:
        return {}
    name = str(device)
    if getattr(device, "type", "") == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
    dtype = getattr(stage, "dtype", None)
    return {"device": name, "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None}


def apply_stage(dataset: ray.data.Dataset, factory: StageFactory, recorder) -> ray.data.Dataset:
    """Add one stage to the graph with the resources it declares."""
    stage = factory()  # cheap: constructors only store config; models load in setup()
    res = stage.resources
    common = dict(
        batch_size=stage.rows_per_block,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
        udf_modifying_row_count=False,
    )
    if res.num_gpus > 0:
        common["num_gpus"] = res.num_gpus  # num_gpus=0 would still count as a GPU request (ray#45201)
    if stage.uses_model:
        return dataset.map_batches(
            StageActor,
            fn_constructor_kwargs={"factory": factory, "recorder": recorder},
            compute=ActorPoolStrategy(size=res.num_workers),
            **common,
        )
    return dataset.map_batches(
        run_stage_task,
        fn_kwargs={"factory": factory, "recorder": recorder},
        compute=TaskPoolStrategy(size=res.num_workers),
        **common,
    )
