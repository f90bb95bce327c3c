"""What a person sees in the terminal: the end-of-build summary, progress bars of long steps, quiet Ray logs.

- ``build_summary``: the per-stage table, counts, top reject reasons, duplicates removed, output and report.
- ``progress``: a tqdm bar on stderr for the long loops of export, embed-prompts, sample and verify; it draws
  only on a terminal (tests and logs get nothing).
- ``quiet_ray``: Ray Data logs per-block INFO lines (and, off a terminal, its progress as log lines) through
  the ``ray.data`` logger's console handler; raised to WARNING by default, and its ERROR tracebacks of a failed
  run are left to ``curate``'s one-line error. Its full log still goes to the session's ``logs/ray-data``
  files. Ray Data's progress bars on a terminal are not logging and stay.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from curation.stats import format_stage_table

T = TypeVar("T")
TOP_REASONS = 5
DUPLICATE_REASONS = ("duplicate", "near_duplicate")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """``iterable`` with a progress bar on stderr when stderr is a terminal."""
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)


class _NoErrors(logging.Filter):
    """Ray Data logs a failed run's tracebacks at ERROR before raising; ``curate`` reports the error itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


_NO_ERRORS = _NoErrors()
_console = {"worker_logs": True}  # what quiet_ray decided; library use (no CLI) keeps Ray's defaults


def worker_logs_wanted() -> bool:
    """Whether the workers' stdout/stderr should reach the driver (``ray.init(log_to_driver=...)``)."""
    return _console["worker_logs"]


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's INFO chatter and Ray Data's error tracebacks off the console unless ``verbose`` (warnings show),
    and the workers' output too (``worker_logs_wanted``, read where Ray is started)."""
    _console["worker_logs"] = verbose
    level = logging.INFO if verbose else logging.WARNING
    import ray.data  # noqa: F401  (importing it configures the "ray.data" logger and its console handler)

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(level)
            handler.removeFilter(_NO_ERRORS)
            if not verbose:
                handler.addFilter(_NO_ERRORS)
    # ray.init resets the "ray" logger's own level (its logging_level argument), not its handlers' levels.
    for handler in logging.getLogger("ray").handlers:
        handler.setLevel(level)


def _share(part: int, whole: int) -> str:
    return f" ({100 * part / whole:.1f}%)" if whole else ""


def duplicates_removed(manifest: dict[str, Any]) -> int:
    dedup = (manifest.get("funnel") or {}).get("dedup") or {}
    return sum(n for reason, n in dedup.items() if reason in DUPLICATE_REASONS)


def top_reasons(reasons: dict[str, int], n: int = TOP_REASONS) -> str:
    ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{reason} {count}" for reason, count in ordered[:n])
    more = len(ordered) - n
    return shown + (f", and {more} other reason(s)" if more > 0 else "")


def build_summary(manifest: dict[str, Any], output: str, report: str | None) -> str:
    """The lines printed at the end of ``curate build``."""
    counts = manifest.get("counts") or {}
    total = counts.get("input", 0)
    lines = [format_stage_table(manifest.get("stages") or {}), ""]
    lines.append(
        f"written   {counts.get('written', 0)} of {total} inputs{_share(counts.get('written', 0), total)}; "
        f"rejected {counts.get('rejected', 0)}, failed {counts.get('failed', 0)}"
    )
    if manifest.get("reject_reasons"):
        lines.append(f"rejected  {top_reasons(manifest['reject_reasons'])}")
    if manifest.get("failure_reasons"):
        reasons = top_reasons(manifest["failure_reasons"])
        lines.append(f"failed    {reasons}  (tracebacks: {output}/_run/errors-*.jsonl)")
    lines.append(f"dedup     {duplicates_removed(manifest)} duplicate(s) removed")
    if manifest.get("unaccounted"):
        unaccounted = manifest["unaccounted"]
        lines.append(f"warning   {unaccounted} input(s) not accounted for (read vs written + rejected + failed)")
    lines.append(f"output    {output}  ({len(manifest.get('shards') or [])} shards)")
    lines.append(f"report    {report}" if report else f"report    curate report {output}")
    return "\n".join(lines)
