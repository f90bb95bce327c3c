"""The read tasks: read units expanded into sample rows, in a module that stays light to import.

Every Ray worker that runs a read task imports this module (not ``pipelines.t2i``, which imports every
stage and torch: seconds per worker process on a small node).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa

from curation.config import ReaderConfig
from curation.io import readers
from curation.io.keys import DUPLICATE_KEY
from curation.records import REJECTED, mark, rows_to_table
from curation.thumbnails import reject_thumbnail
from pipelines import dedup

READ_CHUNK_ROWS = 64  # rows per block out of a read task: bounds block size for tar/parquet inputs


def read_units(
    table: pa.Table, reader_config: ReaderConfig, max_bytes: int, finished_ref: list, recorder
) -> Iterator[pa.Table]:
    """Ray task: expand read units into sample rows, skipping inputs an earlier run already finished and
    rejecting the duplicates the dedup step found (stage ``dedup``) before any other stage sees them.

    Every input read is counted here, per unit, whatever becomes of it (skipped as done included), so
    ``counts.input`` is measured independently of the outcomes.
    """
    finished = dedup.cached_finished(finished_ref[0])
    for unit_json, rejections_json in zip(table["unit"].to_pylist(), table["dedup"].to_pylist(), strict=True):
        unit, rejections = json.loads(unit_json), json.loads(rejections_json)
        started, start = time.time(), time.perf_counter()
        chunk, outcomes = [], Counter()
        for position, row in enumerate(readers.iter_unit(unit, reader_config, max_bytes=max_bytes)):
            if finished.contains(row):
                outcomes["already_done"] += 1
                continue
            rejection = rejections.get(str(position))
            if rejection and rejection[0] == row["key"]:  # the key guards against a unit that reads differently now
                if rejection[1] != DUPLICATE_KEY:  # a copy: the report shows it beside the sample kept
                    row["thumbnail"] = reject_thumbnail(row["image"], rejection[1])
                mark(row, REJECTED, dedup.STAGE, rejection[1], rejection[2])
            outcomes[row["status"]] += 1
            chunk.append(row)
            if len(chunk) >= READ_CHUNK_ROWS:
                yield rows_to_table(chunk)
                chunk = []
        if chunk:
            yield rows_to_table(chunk)
        read = sum(outcomes.values())
        recorder.record_inputs.remote(unit["unit_id"], {"input": read, "already_done": outcomes["already_done"]})
        figures = {"rows_in": read, "rows_out": dict(outcomes), "seconds": time.perf_counter() - start}
        figures.update(worker=f"{os.uname().nodename}:{os.getpid()}", started_at=started, ended_at=time.time())
        recorder.record.remote("read", figures)
