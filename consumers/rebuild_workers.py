"""A rebuild split across processes by partition number (``queuestream rebuild --workers``).

A rebuild is CPU-bound in Python (decoding events, building the target's rows), so
one process uses one core. It can split as a consumer group does: every change
topic has the same partitions and a customer's events share one partition number
in all of them (promise 4), so worker ``i`` of ``n`` owns the partition numbers ``p``
with ``p % n == i`` in every topic, applies whole refreshes of them with the same
exactly-once bookkeeping into the same new database, and stores their offsets
there. The new database is not in use until the rebuild ends, so that each worker
commits its share of a refresh on its own changes nothing anyone sees: at the end it
holds every refresh up to the point in time, on every partition, as one worker (or
a group of several consumers) would leave it.

This process runs share 0 itself; the others run in processes started for the
rebuild (spawned: a forked copy of a process with librdkafka's threads is not safe).
They send back what they log, each batch they commit (for the progress bar), their
figures and their error, over one queue read by a thread here. The first failure
stops every share: the rebuild fails with that worker's error, and the new database
holds part of it (as a rebuild stopped in one process does).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from consumers.batch_apply import BatchOutcome
from consumers.runtime import RunStats, StopAt
from queuestream.errors import QueuestreamError
from queuestream.settings import Settings

__all__ = ["Share", "run_shares", "shares_of"]

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between two looks at the workers while waiting for news
_END_GRACE = 10.0  # seconds a worker is given to end by itself once its result is in


@dataclass(frozen=True, slots=True)
class Share:
    """One worker's part of a rebuild: the partition numbers it owns, and their stops."""

    number: int
    of: int
    partitions: tuple[int, ...]
    stop: StopAt

    def describe(self) -> str:
        numbers = ", ".join(str(p) for p in self.partitions)
        return f"worker {self.number + 1} of {self.of} (partitions {numbers})"


def shares_of(stop: StopAt, workers: int) -> list[Share]:
    """``stop`` split into ``workers`` shares by partition number (``p % workers``).

    Fewer shares come back when there are fewer partition numbers than workers.
    """
    numbers = sorted({p for _, p in stop.offsets})
    workers = max(1, min(workers, len(numbers)))
    found = []
    for i in range(workers):
        mine = tuple(p for p in numbers if p % workers == i)
        offsets = {tp: o for tp, o in stop.offsets.items() if tp[1] in mine}
        found.append(Share(i, workers, mine, replace(stop, offsets=offsets)))
    return found


RunShare = Callable[[Settings, StopAt, threading.Event, Callable[[BatchOutcome], None]], RunStats]


@dataclass
class _Progress:
    """What the shares reported, gathered in this process."""

    on_batch: Callable[[BatchOutcome], None] | None
    refresh_ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def batch(self, outcome: BatchOutcome) -> None:
        with self.lock:
            self.refresh_ids.update(entry.refresh_id for entry in outcome.entries)
            if self.on_batch is not None:
                self.on_batch(outcome)


def run_shares(
    settings: Settings,
    shares: list[Share],
    run_share: RunShare,
    *,
    on_batch: Callable[[BatchOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> RunStats:
    """Run share 0 here and the others in processes of their own; the figures of all.

    ``run_share(settings, stop_at, stop, on_batch)`` runs one share (a bounded
    :class:`~consumers.runtime.ConsumerRuntime`); it must be importable by name, as
    the spawned processes call it too. ``stop``, when set, stops every share.
    """
    started = time.monotonic()
    stop = stop or threading.Event()
    progress = _Progress(on_batch)
    context = multiprocessing.get_context("spawn")
    news: Any = context.Queue()
    processes = {
        share.number: context.Process(
            target=_worker,
            args=(settings, share, run_share, news, _log_levels()),
            name=f"rebuild-{share.number + 1}",
            daemon=True,
        )
        for share in shares[1:]
    }
    for process in processes.values():
        process.start()
    log.info("%s in this process, the others started", shares[0].describe())
    results: dict[int, RunStats] = {}
    failures: dict[int, BaseException] = {}
    listener = threading.Thread(
        target=_listen,
        args=(news, processes, progress, results, failures, stop),
        name="rebuild-workers",
        daemon=True,
    )
    listener.start()
    try:
        try:
            results[0] = run_share(settings, shares[0].stop, stop, progress.batch)
        except BaseException as exc:
            failures.setdefault(0, exc)
            stop.set()
            raise
        if not stop.is_set():
            listener.join()  # every other share has ended
    finally:
        # Stopped or failed: the others' work is of no use, and their open
        # transactions roll back as their processes end.
        _end(processes, at_once=stop.is_set())
        stop.set()
        news.close()
    if failures:
        number, failure = min(failures.items())
        log.error(
            "%s failed: the new database holds part of the rebuild; rebuild into a new, "
            "empty database",
            shares[number].describe(),
        )
        raise failure
    return _merged(results.values(), progress, time.monotonic() - started)


def _listen(
    news: Any,
    processes: dict[int, Any],
    progress: _Progress,
    results: dict[int, RunStats],
    failures: dict[int, BaseException],
    stop: threading.Event,
) -> None:
    """Serve the workers' news until each has sent its result (or died without one)."""
    waiting = set(processes)
    while waiting:
        try:
            kind, number, value = news.get(timeout=_POLL)
        except queue.Empty:
            for number in sorted(waiting):
                process = processes[number]
                if not process.is_alive() and number not in results:
                    failures[number] = QueuestreamError(
                        f"rebuild worker {number + 1} ended without a result "
                        f"(exit code {process.exitcode})"
                    )
                    waiting.discard(number)
                    stop.set()
            continue
        if kind == "log":
            logging.getLogger(value.name).handle(value)
        elif kind == "batch":
            progress.batch(value)
        elif kind == "done":
            results[number] = value
            waiting.discard(number)
        elif kind == "error":
            failures[number] = value
            waiting.discard(number)
            stop.set()


def _end(processes: dict[int, Any], *, at_once: bool) -> None:
    """Let every worker end (``at_once``: stop them); their open transactions roll back."""
    deadline = time.monotonic() + (0.0 if at_once else _END_GRACE)
    for process in processes.values():
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes.values():
        if process.is_alive():
            process.terminate()
            process.join(_END_GRACE)


def _merged(results: Any, progress: _Progress, seconds: float) -> RunStats:
    """The shares' figures as one rebuild's: a refresh counts once, however many applied it."""
    total = RunStats()
    for stats in results:
        total.batches += stats.batches
        total.rows += stats.rows
        total.stale += stats.stale
        total.errors += stats.errors
        total.skipped_applied += stats.skipped_applied
        total.tombstones += stats.tombstones
        total.outages += stats.outages
        for name, n in stats.counts.items():
            total.counts[name] = total.counts.get(name, 0) + n
    total.refreshes = len(progress.refresh_ids)
    total.seconds = seconds
    return total


# -- in a worker's process ------------------------------------------------------------------
def _log_levels() -> dict[str, int]:
    """The levels set in this process (the root's and each logger's own), for a worker."""
    levels = {"": logging.getLogger().level}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class _Forward(logging.handlers.QueueHandler):
    """A worker's log records, sent to the rebuild's process to be handled there."""

    def __init__(self, news: Any, share: Share) -> None:
        super().__init__(news)
        self.news = news
        self.share = share

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record with its message made (and marked with the worker), ready to pickle."""
        record = super().prepare(record)
        record.msg = f"worker {self.share.number + 1} of {self.share.of}: {record.msg}"
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.news.put(("log", self.share.number, record))


def _worker(
    settings: Settings, share: Share, run_share: RunShare, news: Any, levels: dict[str, int]
) -> None:
    """One share in a process of its own: everything it has to say goes over ``news``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Forward(news, share))
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    log.info("started, partitions %s", ", ".join(str(p) for p in share.partitions))
    try:
        stats = run_share(
            settings,
            share.stop,
            threading.Event(),
            lambda outcome: news.put(("batch", share.number, outcome)),
        )
    except BaseException as exc:
        if not isinstance(exc, QueuestreamError | KeyboardInterrupt):
            log.exception("%s failed", share.describe())  # the traceback, in the log
        news.put(("error", share.number, _sendable(exc, share)))
    else:
        news.put(("done", share.number, stats))
    news.close()
    news.join_thread()


def _sendable(exc: BaseException, share: Share) -> BaseException:
    """``exc`` as it can cross to the rebuild's process: itself, or what it said."""
    if isinstance(exc, QueuestreamError):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(exc))
            return exc
    return QueuestreamError(f"{share.describe()} failed: {type(exc).__name__}: {exc}")
