"""What a stage reports about its own work, for the adapter's per-stage statistics.

The adapter (``pipelines/ray_stages.py``) times ``process_batch`` and counts rows itself; a model stage
adds only what the adapter cannot see: seconds spent in the model and the FLOPs it executed, from which
the adapter derives FLOP/s and, on CUDA, MFU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class StageMetrics:
    model_seconds: float = 0.0
    model_flops: float = 0.0
    model_calls: int = 0
    flops_known: bool = True

    def add_model_time(self, seconds: float, flops: float | None = None) -> None:
        self.model_seconds += seconds
        self.model_calls += 1
        if flops is None:
            self.flops_known = False
        else:
            self.model_flops += flops

    def count_flops(self, compute: Callable[[], float]) -> float | None:
        """The analytic FLOPs of one call, or None (and a one-time warning) when they cannot be computed."""
        try:
            return float(compute())
        except Exception as error:  # an architecture the FLOP model does not know: time without FLOPs
            if self.flops_known:
                log.warning("model FLOPs not computed: %s", error)
            return None

    def take(self) -> dict[str, float]:
        """This batch's figures; resets for the next one."""
        taken = {"model_seconds": self.model_seconds, "model_calls": self.model_calls}
        if self.model_calls and self.flops_known:
            taken["model_flops"] = self.model_flops
        self.model_seconds, self.model_flops, self.model_calls, self.flops_known = 0.0, 0.0, 0, True
        return taken
