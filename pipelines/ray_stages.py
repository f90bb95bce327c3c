"""Adapter from Ray-agnostic stages to Ray Data operators.

Model stages become a fixed-size actor pool (``setup()`` once per actor, weights held for the whole
job); CPU stages become tasks. Blocks are Arrow tables with ``ROW_SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import ray.data
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from curation.records import rows_to_table, table_to_rows
from curation.stages.base import Stage

StageFactory = Callable[[], Stage]


class StageActor:
    """Holds one stage instance (and its model) for the lifetime of a Ray actor."""

    def __init__(self, factory: StageFactory) -> None:
        self.stage = factory()
        self.stage.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        return rows_to_table(self.stage.process_batch(table_to_rows(table)))


def run_stage_task(table: pa.Table, factory: StageFactory) -> pa.Table:
    stage = factory()
    stage.setup()
    return rows_to_table(stage.process_batch(table_to_rows(table)))


def apply_stage(dataset: ray.data.Dataset, factory: StageFactory) -> ray.data.Dataset:
    """Add one stage to the graph with the resources it declares."""
    stage = factory()  # cheap: constructors only store config; models load in setup()
    res = stage.resources
    common = dict(
        batch_size=res.batch_size,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
        udf_modifying_row_count=False,
    )
    if res.num_gpus > 0:
        common["num_gpus"] = res.num_gpus  # num_gpus=0 would still count as a GPU request (ray#45201)
    if stage.uses_model:
        return dataset.map_batches(
            StageActor,
            fn_constructor_kwargs={"factory": factory},
            compute=ActorPoolStrategy(size=res.num_workers),
            **common,
        )
    return dataset.map_batches(
        run_stage_task,
        fn_kwargs={"factory": factory},
        compute=TaskPoolStrategy(size=res.num_workers),
        **common,
    )
