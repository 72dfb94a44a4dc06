"""``queuestream produce``: refresh every ``interval`` seconds, through outages, until stopped.

``interval`` is a period: a refresh starts ``interval`` seconds after the last one
started, at once when that one took longer. Rows changed while a refresh runs wait
for the next one, so waiting a full interval *after* a long refresh would make the
next one longer still and every row later (at 10,000 changed rows/s, refreshes of
about a second, ``make bench-freshness``: p99 from 3.3 s to the figure in the
README). Kafka Connect's JDBC source polls the same way (``poll.interval.ms`` from
the last poll's start).

The loop owns the refresher's life: it builds one (so a broker or source that is
down at start-up is waited for like an outage later on), refreshes, and on a
retriable failure throws it away and waits (queuestream/retry.py) before building a
new one, which settles any open transaction and reads the committed progress back.

A row that cannot be encoded, past the error budget (``--max-errors``) or without
one, fails the refresh without committing anything. The loop does not exit (a
supervisor restarting it would loop too): it keeps the refresher, retries with
backoff until the row is fixed in the source, and says so in its log, its
metrics (``observer.stuck``) and the status topic the monitor reads
(:mod:`queuestream.producer_status`).

With ``sweep_every`` the time between refreshes is spent sweeping
(:mod:`producer.sweep`), a throttled step at a time, when a pass is due; a
refresh waits at most for the step in hand. When refreshes leave less than
:data:`SWEEP_SHARE` of the interval, a due pass still gets that share (the next
refresh starts that much later), so that a producer at its limit still sweeps. A
finished pass is reported to the observer and, with the producer's status, to
the status topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from producer.refresh import Refresher, RefreshResult
from producer.sweep import Sweeper, SweepReport
from queuestream.errors import EncodingError, RetriableError
from queuestream.retry import Backoff, Outage

__all__ = ["SWEEP_SHARE", "ProduceLoop", "RefreshObserver"]

log = logging.getLogger(__name__)

#: The produce loop's default: the first retry after 2 s, then up to a minute apart.
_LOOP_BACKOFF = Backoff(first=2.0, maximum=60.0)

#: The least share of the interval a due sweep pass gets after a refresh.
SWEEP_SHARE = 0.1


class RefreshObserver(Protocol):
    """What a produce loop reports, e.g. to :class:`queuestream.metrics.ProducerMetrics`."""

    def started(self, watermark: datetime | None) -> None:
        """A refresher is ready; ``watermark`` is the progress it read back."""

    def refreshed(self, result: RefreshResult) -> None:
        """A refresh committed."""

    def failed(self, error: BaseException) -> None:
        """A refresh failed and will be retried."""

    def stuck(self, error: EncodingError) -> None:
        """A row that cannot be encoded stops the feed; cleared by the next ``refreshed``."""

    def swept(self, report: SweepReport) -> None:
        """A sweep pass finished."""


class ProduceLoop:
    """``queuestream produce``: refresh every ``interval`` seconds until stopped.

    The refresher is built inside the loop, so a broker or database that is down
    at start-up is waited for like an outage later on: retried with backoff.
    ``stop()`` (wired to SIGTERM/SIGINT by the CLI) lets the refresh in hand
    finish and commit, then the loop exits. A refresh that cannot commit (the broker is
    down) is not retried once stopped: nothing of it is committed, the watermark has not
    moved, and the next start publishes its changes.
    """

    def __init__(
        self,
        make_refresher: Callable[[], Refresher],
        interval: float,
        backoff: Backoff = _LOOP_BACKOFF,
        observer: RefreshObserver | None = None,
        sweep_every: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``: the event ``stop()`` sets, when the refreshers are to see it too (a
        refresher made with it gives up waiting for a broker that is down once it is set)."""
        self.make_refresher = make_refresher
        self.sweep_every = sweep_every
        self._sweeper: Sweeper | None = None
        self._last_sweep: SweepReport | None = None
        self.observer = observer
        self.refresher: Refresher | None = None
        self.interval = interval
        self.backoff = backoff
        self._stop = stop or threading.Event()
        self._reported: tuple[object, ...] | None = None  # the last status written

    def stop(self) -> None:
        self._stop.set()

    def run(self, since: datetime | None = None, max_refreshes: int | None = None) -> int:
        done = 0
        outage = Outage("the refresh (the watermark does not move meanwhile)", self.backoff)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if self.refresher is None:
                        self.refresher = self.make_refresher()
                        if self.observer is not None:
                            self.observer.started(self.refresher.progress.watermark)
                    results = self.refresher.refresh(since)
                    if self.observer is not None:
                        for result in results:
                            self.observer.refreshed(result)
                    since = None  # the override applies once
                    outage.succeeded()
                    self._report(None)
                    done += 1
                    # A period: what is left of the interval since this refresh started.
                    wait = max(0.0, self.interval - (time.monotonic() - started))
                    if max_refreshes is None or done < max_refreshes:
                        wait = self._sweep_for(wait)
                except RetriableError as exc:
                    # Start over with a new producer: it settles any open transaction
                    # and reads the committed progress back, so nothing is assumed.
                    if self.observer is not None:
                        self.observer.failed(exc)
                    self._discard()
                    if self._stop.is_set():
                        log.info("stopped; the refresh in hand did not commit: %s", exc)
                        break
                    wait = outage.failed(exc)
                except EncodingError as exc:
                    # Nothing committed, the snapshot is released: the refresher stays.
                    if self.observer is not None:
                        self.observer.stuck(exc)
                    self._report(exc)
                    wait = outage.failed(_advised(exc))
                if max_refreshes is not None and done >= max_refreshes:
                    break
                self._stop.wait(wait)
        finally:
            self._discard()
        return done

    def _report(self, stuck_on: EncodingError | None) -> None:
        """Write the status (stuck on a row, or running) when it differs from the last one.

        Best effort: a broker that fails here fails the next refresh too, and the
        status is written once it is back.
        """
        status: tuple[object, ...] = (
            ("running",)
            if stuck_on is None
            else ("stuck", stuck_on.table, repr(stuck_on.key), stuck_on.column, stuck_on.reason)
        )
        last = self._last_sweep
        status += (None if last is None else last.finished,)
        if self.refresher is None or status == self._reported:
            return
        try:
            self.refresher.report(stuck_on, None if last is None else last.as_dict())
        except RetriableError as exc:
            log.debug("could not write the producer status: %s", exc)
            return
        self._reported = status

    def _sweep_for(self, seconds: float) -> float:
        """Sweep (when a pass is due) for up to ``seconds``, at least :data:`SWEEP_SHARE` of
        the interval; what is left of them to wait."""
        if self.sweep_every is None or self.refresher is None:
            return seconds
        now = time.monotonic()
        refresh_at = now + seconds  # when the next refresh is due
        deadline = now + max(seconds, self.interval * SWEEP_SHARE)
        if self._sweeper is None or self._sweeper.refresher is not self.refresher:
            self._sweeper = Sweeper(self.refresher)
        if not self._sweeper.due(self.sweep_every):
            return seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            step = self._sweeper.step()
            if step.finished is not None:
                self._last_sweep = step.finished
                if self.observer is not None:
                    self.observer.swept(step.finished)
                self._report(None)
                break
            self._stop.wait(min(step.pause, max(0.0, deadline - time.monotonic())))
        # A pass that ended early does not hold the refresh back for the rest of its share.
        return max(0.0, refresh_at - time.monotonic())

    def _discard(self) -> None:
        self._sweeper = None
        if self.refresher is not None:
            try:
                self.refresher.close()
            except Exception:  # closing after an outage may fail too
                log.debug("closing the refresher failed", exc_info=True)
            self.refresher = None


def _advised(error: EncodingError) -> EncodingError:
    """``error`` with what to do about it, for the log."""
    advice = (
        f"{error.reason}; the feed waits for this row: fix it in the source (its next "
        "change is published), or run produce with --max-errors N to send such rows to "
        "the dead-letter topic <topic>.dlq and go on"
    )
    return EncodingError(advice, table=error.table, key=error.key, column=error.column)
