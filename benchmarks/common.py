"""What every benchmark module shares: the comparison row, side-by-side timing, load and machine records."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = ROOT / ".cache/tiny-models"
UNITS = ("s", "ms", "bytes", "MiB")

Sides = dict[str, Callable[[], object]]


def comparison(
    name: str,
    unit: str,
    baseline: float,
    ours: float,
    target: float,
    equivalent: bool,
    note: str,
    **details: Any,
) -> dict[str, Any]:
    """One row of ``results.json["comparisons"]``: ratio = baseline / ours (> 1: ours is better)."""
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {UNITS}")
    ratio = baseline / ours if ours > 0 else float("inf")
    return {
        "name": name,
        "unit": unit,
        "baseline": round(baseline, 6),
        "ours": round(ours, 6),
        "ratio": round(ratio, 4),
        "target": target,
        "met": bool(ratio >= target),
        "equivalent": bool(equivalent),
        "note": note,
        "details": details,
    }


def alternate(sides: Sides, repeats: int, cpu: bool = True) -> tuple[dict, dict, dict]:
    """Run each side ``repeats`` times, alternating (A B A B ...); returns (medians, runs, last outputs).

    Every call is timed twice: process CPU seconds (all threads of this process) and wall seconds; ``runs`` holds
    both per side, the medians are of CPU seconds (``cpu``, the default: single-threaded work on a shared machine
    is measured by what it consumed, not by when the scheduler let it run) or of wall seconds.
    """
    runs: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in sides}
    outputs: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            runs[name]["cpu"].append(round(time.process_time() - cpu_start, 5))
            runs[name]["wall"].append(round(time.perf_counter() - start, 5))
    clock = "cpu" if cpu else "wall"
    return {name: statistics.median(r[clock]) for name, r in runs.items()}, runs, outputs


def noop() -> None:
    """A task that only starts a worker process (this module imports nothing heavy at module level)."""


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def with_load(bench: Callable[..., Any], *args, **kwargs) -> tuple[Any, dict[str, float]]:
    """Run one benchmark; return its result and the 1-minute load average before/after plus its wall seconds."""
    before, start = load_average(), time.perf_counter()
    result = bench(*args, **kwargs)
    seconds = round(time.perf_counter() - start, 1)
    return result, {"load_before": before, "load_after": load_average(), "seconds": seconds}


def machine(threads: int) -> dict[str, Any]:
    import diffusers
    import ray
    import torch
    import transformers
    from PIL import __version__ as pillow

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "ray": ray.__version__,
        "pillow": pillow,
        "libjpeg_turbo": _libjpeg_turbo(),
    }


def _libjpeg_turbo() -> str | None:
    from PIL import features

    return features.version("libjpeg_turbo")


# ---------------------------------------------------------------- sides in their own processes
def _serve(connection, build: Callable[[], Callable[[], object]], threads: int) -> None:
    """Child process: build the side once, then run it on every request; timed here, in the child."""
    import torch

    torch.set_num_threads(threads)
    side = build()
    while connection.recv():
        start, cpu_start = time.perf_counter(), time.process_time()
        output = side()
        connection.send((time.perf_counter() - start, time.process_time() - cpu_start, output))
    connection.close()


class ProcessSide:
    """One side of a comparison in a fresh process (as deployed: PixArt's extractor script, a Ray actor):
    process-wide settings a side makes (allocator, threads) cannot leak into the other side.

    ``build`` (picklable, e.g. a ``functools.partial`` of a module-level function) returns the callable to
    time. Calling the instance runs it once in the child and returns the output; ``seconds`` (wall) and
    ``cpu_seconds`` (the child's CPU time, all threads) hold the child's own timings (no IPC in them).
    """

    def __init__(self, build: Callable[[], Callable[[], object]], threads: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, build, threads), daemon=True)
        self.process.start()
        child.close()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def __call__(self) -> object:
        self.connection.send(True)
        seconds, cpu_seconds, output = self.connection.recv()
        self.seconds.append(round(seconds, 5))
        self.cpu_seconds.append(round(cpu_seconds, 5))
        return output

    def close(self) -> None:
        self.connection.send(False)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
