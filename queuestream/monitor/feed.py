"""One collector thread that keeps the latest snapshot for every view of it.

The terminal view and the web page read ``SnapshotFeed.current()``; neither
talks to Kafka. A snapshot that cannot be collected (the broker is down) keeps
the last good one on show, with the error beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from queuestream.monitor.collector import SnapshotCollector
from queuestream.monitor.snapshot import Snapshot

__all__ = ["FeedState", "SnapshotFeed"]

log = logging.getLogger(__name__)

#: How long stopping waits for a snapshot being collected (:meth:`SnapshotFeed.stop`).
STOP_WAIT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class FeedState:
    """The latest snapshot (None before the first), the last error, and a counter of updates."""

    snapshot: Snapshot | None = None
    error: str | None = None
    version: int = 0


class SnapshotFeed:
    """Collects a snapshot every ``interval`` seconds in a thread until ``stop()``."""

    def __init__(self, make_collector: Callable[[], SnapshotCollector], interval: float) -> None:
        self.interval = max(0.5, interval)
        self._make_collector = make_collector
        self._state = FeedState()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-collector", daemon=True)

    def start(self) -> SnapshotFeed:
        self._thread.start()
        return self

    def current(self) -> FeedState:
        with self._changed:
            return self._state

    def wait_for_update(self, after: int, timeout: float) -> FeedState:
        """The state once its version is past ``after``, or as it is after ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: self._state.version > after, timeout)
            return self._state

    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> None:
        """Stop collecting; a round under way has ``timeout`` seconds to end. The monitor
        holds nothing that must be finished, and a round waiting on a slow broker can
        take tens of seconds (each of its reads is bounded): SIGTERM does not wait it out.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.info("monitor: stopped without waiting for the snapshot being collected")

    def _publish(self, snapshot: Snapshot | None, error: str | None) -> None:
        with self._changed:
            self._state = FeedState(
                snapshot if snapshot is not None else self._state.snapshot,
                error,
                self._state.version + 1,
            )
            self._changed.notify_all()

    def _run(self) -> None:
        collector: SnapshotCollector | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if collector is None:
                        collector = self._make_collector()
                    self._publish(collector.collect(), None)
                except Exception as exc:
                    # The view stays up and says what is wrong; the next round tries again.
                    log.warning("monitor: %s: %s", type(exc).__name__, exc)
                    self._publish(None, f"{type(exc).__name__}: {exc}")
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            if collector is not None:
                collector.close()
