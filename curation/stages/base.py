"""The stage contract every pipeline step follows.

A stage declares its resources, loads what it needs once in ``setup()``, and transforms a batch of
rows (``curation.records.ROW_SCHEMA``) in ``process_batch``. It never imports Ray: the adapter in
``pipelines/ray_stages.py`` decides whether it runs as a task or in a fixed actor pool.

Rows that are not OK pass through untouched. An exception on one row marks that row FAILED with the
error; it never ends the job.
"""

from __future__ import annotations

import traceback
from abc import ABC
from typing import ClassVar

from curation.config import Resources
from curation.records import FAILED, Row, is_ok, mark
from curation.stages.metrics import StageMetrics

MAX_TRACE_CHARS = 16_000  # a traceback's tail: where it was raised


def error_detail(error: BaseException) -> str:
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return last


def mark_error(row: Row, stage: str, error: BaseException) -> Row:
    """FAILED by ``error``: the one-line reason in ``detail`` (rejects), the traceback in ``error_trace``
    (the writer logs it to ``_run/errors-*.jsonl``)."""
    mark(row, FAILED, stage, "error", error_detail(error))
    row["error_trace"] = "".join(traceback.format_exception(error))[-MAX_TRACE_CHARS:]
    return row


class Stage(ABC):
    """One step of the pipeline. Subclasses set ``name`` and override ``process_rows`` or ``process_row``."""

    name: ClassVar[str]
    uses_model: ClassVar[bool] = False  # model stages run in a fixed actor pool, setup() once per actor
    default_rows_per_block: ClassVar[int] = 32  # rows per worker call unless resources.rows_per_block says

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.metrics = StageMetrics()

    @property
    def rows_per_block(self) -> int:
        """Rows one worker call receives: at least one full model micro-batch."""
        return self.resources.rows_per_block or max(self.resources.batch_size, self.default_rows_per_block)

    def setup(self) -> None:
        """Load models / heavy state. Called once per worker before the first batch."""

    def process_batch(self, rows: list[Row]) -> list[Row]:
        """Run the stage on the OK rows of a batch; others pass through in place."""
        live = [row for row in rows if is_ok(row)]
        if live:
            self.process_rows(live)
        return rows

    def process_rows(self, rows: list[Row]) -> None:
        """Batched work on OK rows, in place. Default: row by row, each isolated."""
        for row in rows:
            self.run_isolated(row)

    def run_isolated(self, row: Row) -> None:
        try:
            self.process_row(row)
        except Exception as error:  # one bad sample must not end the job
            mark_error(row, self.name, error)

    def process_row(self, row: Row) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither process_rows nor process_row")

    def isolate_failures(self, rows: list[Row], batched) -> None:
        """Run ``batched(rows)``; if it raises, retry row by row so only the culprit fails."""
        try:
            batched(rows)
        except Exception:
            for row in rows:
                try:
                    batched([row])
                except Exception as error:
                    mark_error(row, self.name, error)
