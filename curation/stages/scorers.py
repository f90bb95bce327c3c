"""Model scores of every OK row, and the thresholds on them, before any caption or latent is computed.

One actor holds every enabled scorer model (one CUDA context) and scores micro-batches of the filter's
prepared ``scorer`` view (``curation.stages.prepare.scorer_view``); the view leaves the row here. Scores go
in the row as JSON ``scores`` {name: float}; a score outside ``scorers.<name>.min`` / ``max`` rejects the
row with the score's name as the reason (the first in ``SCORE_NAMES`` order) and every failed rule, with
its score, in the detail. Rows without alt text get no ``clip_similarity``, and no rule applies to them.
"""

from __future__ import annotations

import json
import math
import time
from typing import ClassVar

import numpy as np
import torch

from curation.config import ScorersConfig
from curation.models.scorers import Scorer, build_scorers
from curation.records import REJECTED, Row, drop_pixels, get_pixels, is_ok, mark
from curation.stages.base import Stage, mark_error
from curation.thumbnails import view_thumbnail


def rule_failures(scores: dict[str, float], config: ScorersConfig) -> list[tuple[str, str]]:
    """(name, description) of every score outside its thresholds, in ``SCORE_NAMES`` order."""
    failures = []
    for name in config.enabled:
        value, rule = scores.get(name), config.rule(name)
        if value is None:
            continue
        if rule.min is not None and value < rule.min:
            failures.append((name, f"{name} {value:.4f} < min {rule.min:g}"))
        elif rule.max is not None and value > rule.max:
            failures.append((name, f"{name} {value:.4f} > max {rule.max:g}"))
    return failures


class ScorerStage(Stage):
    name = "scorers"
    uses_model: ClassVar[bool] = True
    default_rows_per_block: ClassVar[int] = 64

    def __init__(self, config: ScorersConfig) -> None:
        super().__init__(config.resources)
        self.config = config
        self.scorers: list[Scorer] = []
        self.device = torch.device("cpu")  # of the first scorer, for the stage statistics
        self.dtype = torch.float32

    def setup(self) -> None:
        if self.scorers:
            return
        scorers = build_scorers(self.config)
        for scorer in scorers:
            scorer.setup()
        if scorers:
            self.device, self.dtype = scorers[0].device, scorers[0].dtype
        self.scorers = scorers

    def process_rows(self, rows: list[Row]) -> None:
        if not self.scorers:
            self.setup()
        ready = [row for row in rows if self._has_view(row)]
        batch_size = self.resources.batch_size
        for start in range(0, len(ready), batch_size):
            self.isolate_failures(ready[start : start + batch_size], self._score_rows)
        for row in ready:
            if is_ok(row):
                self._apply_rules(row)
        for row in rows:
            drop_pixels(row, "scorer")

    def _has_view(self, row: Row) -> bool:
        try:
            get_pixels(row, "scorer")
        except Exception as error:  # missing or malformed prepared pixels: this row fails alone
            mark_error(row, self.name, error)
            return False
        return True

    def _score_rows(self, rows: list[Row]) -> None:
        """Every scorer on one micro-batch; the rows' ``scores`` are written only once all of them succeeded."""
        images = np.stack([get_pixels(row, "scorer") for row in rows])
        texts = [row.get("alt") for row in rows]
        started = time.perf_counter()
        results = {scorer.name: scorer.score(images, texts) for scorer in self.scorers}
        self.metrics.add_model_time(time.perf_counter() - started)
        for index, row in enumerate(rows):
            scores = {name: float(values[index]) for name, values in results.items()}
            row["scores"] = json.dumps({name: value for name, value in scores.items() if not math.isnan(value)})

    def _apply_rules(self, row: Row) -> None:
        failures = rule_failures(json.loads(row["scores"]), self.config)
        if failures:
            row["thumbnail"] = view_thumbnail(get_pixels(row, "scorer"), [reason for reason, _ in failures])
            mark(row, REJECTED, self.name, failures[0][0], "; ".join(text for _, text in failures))
