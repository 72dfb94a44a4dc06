"""Retrying through outages: one backoff formula and one way of reporting it.

Every command that waits for a broker or a database that is down does it the
same way: the first wait is ``first`` seconds, each failure doubles it up to
``maximum``, and each failed attempt logs one WARNING line that says what
failed, for how long it has been failing, and when the next attempt comes. The
first success after an outage logs one INFO line with its length.

How to wait is the caller's: the producer sleeps on its stop event, while a
consumer keeps polling its Kafka consumer (so its group session and rebalance
callbacks stay alive) until the wait is over. :func:`retry` takes that wait as
a function that returns False when the caller was asked to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from queuestream.errors import RetriableError

__all__ = ["Backoff", "Outage", "retry"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A wait of at least this long is never shortened by the doubling formula: with a first
#: wait of 0 (tests, "retry at once"), attempts would otherwise spin.
_FLOOR = 0.05


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``first``, 2 x ``first``, 4 x ``first`` … capped at ``maximum``."""

    first: float
    maximum: float

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        if failures < 1:
            return 0.0
        grown = max(self.first, _FLOOR) * 2.0 ** min(failures - 1, 32)
        return min(max(self.maximum, _FLOOR), grown)


@dataclass(slots=True)
class Outage:
    """One run of failures of the same thing, from its first failure to its first success.

    ``what`` names the thing in the log lines ("the target database", "the refresh").
    """

    what: str
    backoff: Backoff
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    since: float | None = field(default=None)

    @property
    def ongoing(self) -> bool:
        return self.failures > 0

    def failed(self, error: BaseException) -> float:
        """Count a failure, log it with the next wait, and return that wait in seconds."""
        now = self.clock()
        if self.since is None:
            self.since = now
        self.failures += 1
        wait = self.backoff.delay(self.failures)
        log.warning(
            "%s failed (attempt %d, failing for %.0fs): %s; retrying in %.1fs",
            self.what,
            self.failures,
            now - self.since,
            error.situation if isinstance(error, RetriableError) else error,
            wait,
        )
        return wait

    def given_up(self, error: BaseException) -> None:
        """A failure met once the caller was asked to stop: logged as not retried."""
        log.warning("%s failed: %s; not retried, stopping", self.what, error)

    def succeeded(self) -> None:
        """The thing works again: log how long it did not, and start over."""
        if self.since is not None:
            log.info(
                "%s works again after %d failed attempts over %.0fs",
                self.what,
                self.failures,
                self.clock() - self.since,
            )
        self.failures = 0
        self.since = None


def retry(
    attempt: Callable[[], T],
    outage: Outage,
    wait: Callable[[float], bool],
    *,
    retriable: tuple[type[BaseException], ...] = (RetriableError,),
    unless: tuple[type[BaseException], ...] = (),
    max_attempts: int | None = None,
    stopped: Callable[[], bool] | None = None,
) -> T | None:
    """Call ``attempt`` until it returns, waiting out retriable failures.

    ``wait(seconds)`` returns False when the caller has been asked to stop; then
    ``retry`` returns None without another attempt. ``stopped()`` true after a failure
    (the stop came during the attempt) returns None at once, logged as not retried
    rather than with a next wait that will not come. After ``max_attempts`` attempts
    the last error is raised. Errors that are not ``retriable``, or are ``unless``, pass
    through at once.
    """
    while True:
        try:
            result = attempt()
        except retriable as exc:
            if isinstance(exc, unless):
                raise
            if max_attempts is not None and outage.failures + 1 >= max_attempts:
                raise
            if stopped is not None and stopped():
                outage.given_up(exc)
                return None
            if not wait(outage.failed(exc)):
                return None
        else:
            outage.succeeded()
            return result
