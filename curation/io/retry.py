"""Retrying reads that fail for reasons that may go away (I/O errors, timeouts, dropped connections).

``is_read_failure`` decides what a read error means for the input: True -> the row is FAILED (retried on
the next run), False -> the data itself is bad and the row is REJECTED. ``is_retryable`` is the subset
worth retrying at once: a missing or forbidden file is a failure, but it will not come back in a second.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# OSErrors that describe the data, not the access to it.
_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (gzip.BadGzipFile,)
# OSErrors that a retry a moment later will not fix (but a later run may).
_NOT_RETRYABLE_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def _optional_transient_types() -> tuple[type[BaseException], ...]:
    """Connection errors of the remote-filesystem clients that are installed (none is required)."""
    types: list[type[BaseException]] = []
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    try:
        from botocore import exceptions as botocore_errors

        types += [
            botocore_errors.ConnectionError,
            botocore_errors.HTTPClientError,
            botocore_errors.ResponseStreamingError,
            botocore_errors.IncompleteReadError,
        ]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT_TYPES = _optional_transient_types()
_RETRYABLE_HTTP_STATUS = {408, 429, 500, 502, 503, 504}


def _is_retryable_http_status(error: BaseException) -> bool:
    status = getattr(error, "status", None)
    return type(error).__module__.startswith("aiohttp") and status in _RETRYABLE_HTTP_STATUS


def is_retryable(error: BaseException) -> bool:
    """A transient error: retrying the same read soon may succeed."""
    if isinstance(error, _PERMANENT_OS_ERRORS + _NOT_RETRYABLE_OS_ERRORS):
        return False
    return isinstance(error, (OSError, *_TRANSIENT_TYPES)) or _is_retryable_http_status(error)


def is_read_failure(error: BaseException) -> bool:
    """The input could not be read (FAILED, retried next run) rather than being bad data (REJECTED)."""
    return is_retryable(error) or isinstance(error, _NOT_RETRYABLE_OS_ERRORS)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``attempts`` tries, sleeping base, 2 x base, ... (capped) in between."""

    attempts: int = 4
    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, retry_index: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2**retry_index)


class Retrier:
    """Retries calls for one read unit. After a call fails for good, the next call gets a single attempt
    (a storage outage then costs one try per input, not a full backoff each); a success restores retries.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._degraded = False

    def call(self, read: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
        attempts = 1 if self._degraded else max(1, self.policy.attempts)
        for attempt in range(attempts):
            try:
                result = read()
            except Exception as error:
                if not is_retryable(error):
                    raise
                if attempt == attempts - 1:
                    self._degraded = True
                    raise
                self.policy.sleep(self.policy.delay(attempt))
                if before_retry is not None:
                    before_retry()
            else:
                self._degraded = False
                return result
        raise AssertionError("unreachable")


def resumable(open_from: Callable[[int], Iterator[T]], retrier: Retrier, start: int = 0) -> Iterator[T]:
    """Items of a stream that can be reopened at any position, from ``start``: a transient error reopens it
    where it broke. Errors that outlast the retries propagate; the caller knows how many items it got.
    """
    position = start
    stream = open_from(start)

    def reopen() -> None:
        nonlocal stream
        stream = open_from(position)

    while True:
        try:
            item = retrier.call(lambda: next(stream), before_retry=reopen)
        except StopIteration:
            return
        yield item
        position += 1
