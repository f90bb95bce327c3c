"""Peak memory of a process tree: PSS of the driver and every descendant (Ray's raylet, GCS, workers ...).

PSS (proportional set size) charges each shared page (the object store's shared memory, shared libraries)
to the processes that map it in equal parts, so the sum over processes counts every page once. A
background thread samples ``/proc/PID/smaps_rollup`` of the whole tree about ten times a second.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process visible now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children, tree, stack = children_map(), [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


def pss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):  # exited, or not ours to read
        return 0
    return 0


def tree_pss(root: int) -> tuple[int, int]:
    """(sum of PSS over the tree in bytes, number of processes)."""
    pids = process_tree(root)
    return sum(pss_bytes(pid) for pid in pids), len(pids)


class PeakPSS:
    """``with PeakPSS() as peak: ...`` then ``peak.peak_bytes``: the largest tree PSS seen while inside."""

    def __init__(self, root: int | None = None, interval_s: float = 0.1) -> None:
        self.root = root or os.getpid()
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-pss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total, processes = tree_pss(self.root)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, processes
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        total, processes = tree_pss(self.root)  # one last sample at the end
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, processes


def wait_for_samples(peak: PeakPSS, count: int = 2, timeout_s: float = 5.0) -> None:
    """Block until the sampler has taken ``count`` samples (a run shorter than one interval still gets one)."""
    deadline = time.monotonic() + timeout_s
    while peak.samples < count and time.monotonic() < deadline:
        time.sleep(0.01)
