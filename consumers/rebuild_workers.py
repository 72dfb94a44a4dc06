"""A rebuild split across processes by partition number (``queuestream rebuild --workers``).

A rebuild is CPU-bound in Python (decoding events, building the target's rows), so
one process uses one core. It can split as a consumer group does: every change
topic has the same partitions and a customer's events share one partition number
in all of them (promise 4), so worker ``i`` of ``n`` owns the partition numbers ``p``
with ``p % n == i`` in every topic, applies whole refreshes of them with the same
exactly-once bookkeeping into the same new database, and stores their offsets
there. The new database is not in use until the rebuild ends, so that each worker
commits its share of a refresh on its own changes nothing anyone sees: at the end it
holds every refresh up to the point in time, on every partition, as a consumer group
of ``n`` members would leave it (each writes its own sync log rows, and each has the
error budget, ``--max-errors``, a member has).

This process runs share 0 itself; the others run in processes started for the
rebuild (spawned: a forked copy of a process with librdkafka's threads is not safe).
They send back what they log, each batch they commit (for the progress bar), their
figures and their error, over one queue read by a thread here (:class:`_Supervisor`).

Stopping is this process's call. A ``stop`` asked of the rebuild (SIGTERM, Ctrl-C)
halts every worker: each stops as a consumer does, after the batch in hand (a
refresh applied in parts is rolled back), within ``_END_GRACE`` seconds or it is
terminated. The first failure, here or in a worker (an error, or a worker gone
without a result), terminates the others at once, and the rebuild raises it; the
new database then holds part of the rebuild. A worker sees a halt as the close of
a pipe from this process, so it also stops by itself when this process dies.
Workers ignore Ctrl-C: the terminal sends it to every process of the command, and
this process decides for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import multiprocessing.connection
import pickle
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection
from typing import Any

from consumers.batch_apply import BatchOutcome
from consumers.runtime import RunStats, StopAt
from queuestream.errors import QueuestreamError
from queuestream.settings import Settings

__all__ = ["Share", "run_shares", "shares_of"]

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between two looks at the workers (and at this process's stop)
_END_GRACE = 10.0  # seconds a worker has to stop by itself before it is terminated


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
    the spawned processes call it too. ``stop``, when set, stops every share: the
    figures of what was done come back, and nothing is raised.
    """
    started = time.monotonic()
    supervisor = _Supervisor(shares, stop or threading.Event(), on_batch)
    try:
        supervisor.start(settings, run_share)
        try:
            supervisor.results[0] = run_share(
                settings, shares[0].stop, supervisor.stop, supervisor.batch
            )
        except BaseException as exc:
            supervisor.fail(0, exc)
        supervisor.wait()
    finally:
        supervisor.end()
    supervisor.raise_first()
    return supervisor.merged(time.monotonic() - started)


class _Supervisor:
    """The workers of one rebuild, seen from its process: their news, failures and end."""

    def __init__(
        self,
        shares: list[Share],
        stop: threading.Event,
        on_batch: Callable[[BatchOutcome], None] | None,
    ) -> None:
        self.shares = shares
        self.stop = stop  # this process's share stops when set
        self.on_batch = on_batch
        context = multiprocessing.get_context("spawn")
        self._context = context
        self.news: Any = context.Queue()
        # A pipe to each worker, closed to halt it: a worker also sees it close when this
        # process dies. (Not a multiprocessing Event: setting one waits for every process
        # that was waiting on it, and a worker that died waiting never answers.)
        self._halts: list[Connection] = []
        self.halted = threading.Event()
        self.processes: dict[int, Any] = {}
        self.results: dict[int, RunStats] = {}
        self.failures: list[tuple[int, BaseException]] = []  # in the order they came
        self.refresh_ids: set[str] = set()
        self._waiting: set[int] = set()  # started workers not yet heard of at their end
        self._lock = threading.Lock()
        self._heard_all = threading.Event()
        self._closing = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="rebuild-workers", daemon=True)

    # -- this process's side --------------------------------------------------------------
    def start(self, settings: Settings, run_share: RunShare) -> None:
        for share in self.shares[1:]:
            watched, halt = self._context.Pipe(duplex=False)
            self._halts.append(halt)
            process = self._context.Process(
                target=_worker,
                args=(settings, share, run_share, self.news, watched, _log_levels()),
                name=f"rebuild-{share.number + 1}",
                daemon=True,
            )
            process.start()
            watched.close()  # the worker's copy is the one that counts
            with self._lock:
                self.processes[share.number] = process
                self._waiting.add(share.number)
        log.info("%s in this process, the others started", self.shares[0].describe())
        self._listener.start()

    def batch(self, outcome: BatchOutcome) -> None:
        """A batch committed by any share: counted, then shown (the progress bar)."""
        with self._lock:
            self.refresh_ids.update(e.refresh_id for e in outcome.entries if e.is_refresh)
        if self.on_batch is not None:
            self.on_batch(outcome)

    def fail(self, number: int, exc: BaseException) -> None:
        """A share failed: note it (the first one is raised) and stop every share."""
        with self._lock:
            self.failures.append((number, exc))
            self._waiting.discard(number)
        self.stop.set()
        self.halt()

    def halt(self) -> None:
        """Every worker stops (as a consumer does, after the batch in hand)."""
        self.halted.set()
        self._close_halts()

    def _close_halts(self) -> None:
        with self._lock:
            for halt in self._halts:
                halt.close()
            self._halts.clear()

    def wait(self) -> None:
        """Until every worker has reported its end, or the rebuild is to stop."""
        while not self._heard_all.wait(_POLL):
            if self.stop.is_set() or not self._listener.is_alive():
                self.halt()
                return

    def end(self) -> None:
        """Let every worker end, then stop listening.

        After a failure the others are terminated at once (their open transactions roll
        back: the rebuild fails anyway); asked to stop, each has ``_END_GRACE`` seconds
        to stop as a consumer does, after the batch in hand.
        """
        if not self._heard_all.is_set():
            self.halt()
        with self._lock:
            failed = bool(self.failures)
        deadline = time.monotonic() + (0.0 if failed else _END_GRACE)
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes.values():
            if process.is_alive():
                if not failed:
                    log.warning(
                        "%s did not stop in %.0fs: terminating it", process.name, _END_GRACE
                    )
                process.terminate()
                process.join(_END_GRACE)
        self._close_halts()
        self._closing.set()
        if self._listener.is_alive():
            self._listener.join(_END_GRACE)
        self._take_news(block=False)  # a worker that ended meanwhile may have had its say
        self.news.close()
        self.news.cancel_join_thread()

    def raise_first(self) -> None:
        with self._lock:
            failures = list(self.failures)
        if not failures:
            return
        number, first = failures[0]
        if not isinstance(first, KeyboardInterrupt):
            log.error(
                "%s failed: the new database holds part of the rebuild; rebuild into a new, "
                "empty database",
                self.shares[number].describe(),
            )
        raise first

    def merged(self, seconds: float) -> RunStats:
        """The shares' figures as one rebuild's: a refresh counts once, however many applied it.

        Every count of :class:`RunStats` is added up, so one added to it later is too.
        """
        parts = list(self.results.values())
        counts: Counter[str] = Counter()
        for stats in parts:
            counts.update(stats.counts)
        sums = {
            f.name: sum(getattr(stats, f.name) for stats in parts)
            for f in fields(RunStats)
            if f.type in ("int", int)
        }
        return RunStats(
            **{**sums, "refreshes": len(self.refresh_ids)}, seconds=seconds, counts=dict(counts)
        )

    # -- the listener thread --------------------------------------------------------------
    def _listen(self) -> None:
        """Serve the workers' news until each has reported its end (or is gone)."""
        try:
            while not self._closing.is_set():
                self._take_news(block=True)
                self._check_exits()
                with self._lock:
                    if not self._waiting:
                        self._heard_all.set()
                        return
        except BaseException as exc:
            self.fail(0, exc)

    def _take_news(self, *, block: bool) -> None:
        """Take what the workers sent: one message (waiting up to ``_POLL``), or all there is."""
        while True:
            try:
                kind, number, value = (
                    self.news.get(timeout=_POLL) if block else self.news.get_nowait()
                )
            except queue.Empty:
                return
            if kind == "log":
                logging.getLogger(value.name).handle(value)
            elif kind == "batch":
                self.batch(value)
            elif kind == "done":
                with self._lock:
                    self.results[number] = value
                    self._waiting.discard(number)
            elif kind == "error":
                self.fail(number, value)
            if block:
                return

    def _check_exits(self) -> None:
        """A worker that has ended without a word: what it sent last is read first."""
        with self._lock:
            ended = [n for n in self._waiting if not self.processes[n].is_alive()]
        if not ended:
            return
        self._take_news(block=False)  # a worker's last words are in the pipe before it ends
        for number in ended:
            with self._lock:
                unheard = number in self._waiting
            if unheard and not self.halted.is_set():
                self.fail(number, self._gone(number))
            elif unheard:  # stopped by us: its end is no failure of its own
                with self._lock:
                    self._waiting.discard(number)

    def _gone(self, number: int) -> QueuestreamError:
        process = self.processes[number]
        return QueuestreamError(
            f"{self.shares[number].describe()} ended without a result "
            f"(exit code {process.exitcode})"
        )


# -- in a worker's process ------------------------------------------------------------------
def _log_levels() -> dict[str, int]:
    """The levels set in this process (the root's and each logger's own), for a worker."""
    levels = {"": logging.getLogger().level}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None, None, None))
) - {"msg", "args", "exc_info", "exc_text"}


class _Forward(logging.handlers.QueueHandler):
    """A worker's log records, sent to the rebuild's process to be handled there."""

    def __init__(self, news: Any, share: Share) -> None:
        super().__init__(news)
        self.news = news
        self.share = share

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record with its message made (and marked with the worker), ready to pickle.

        Only the standard fields go: anything else on a record (``extra=``) may not
        pickle, and one record that does not pickle stops a queue's feeder thread,
        losing every message after it.
        """
        made = super().prepare(record)
        fields = {k: v for k, v in vars(made).items() if k in _RECORD_FIELDS}
        fields["msg"] = f"worker {self.share.number + 1} of {self.share.of}: {made.msg}"
        return logging.makeLogRecord(fields)

    def enqueue(self, record: logging.LogRecord) -> None:
        self.news.put(("log", self.share.number, record))


def _worker(
    settings: Settings,
    share: Share,
    run_share: RunShare,
    news: Any,
    halt: Connection,
    levels: dict[str, int],
) -> None:
    """One share in a process of its own: everything it has to say goes over ``news``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the rebuild's process decides
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Forward(news, share))
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    log.info("started, partitions %s", ", ".join(str(p) for p in share.partitions))
    stop = threading.Event()
    orphaned = threading.Event()
    watch = threading.Thread(
        target=_watch, args=(halt, stop, orphaned), name="rebuild-halt", daemon=True
    )
    watch.start()
    try:
        stats = run_share(
            settings, share.stop, stop, lambda outcome: news.put(("batch", share.number, outcome))
        )
    except BaseException as exc:
        if not isinstance(exc, QueuestreamError):
            log.exception("failed")  # the traceback, in the log
        news.put(("error", share.number, _sendable(exc, share)))
    else:
        news.put(("done", share.number, stats))
    stop.set()
    if orphaned.is_set():
        news.cancel_join_thread()  # nobody reads: do not wait for the pipe to drain
    news.close()


def _watch(halt: Connection, stop: threading.Event, orphaned: threading.Event) -> None:
    """Set ``stop`` when the rebuild halts (its end of ``halt`` closed), or is gone."""
    parent = multiprocessing.parent_process()
    sentinels: list[Any] = [halt] if parent is None else [halt, parent.sentinel]
    multiprocessing.connection.wait(sentinels)
    if parent is not None and multiprocessing.connection.wait([parent.sentinel], 0):
        orphaned.set()
    stop.set()


def _sendable(exc: BaseException, share: Share) -> BaseException:
    """``exc`` as it can cross to the rebuild's process: itself, or what it said."""
    if isinstance(exc, QueuestreamError):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(exc))
            return exc
    return QueuestreamError(f"{share.describe()} failed: {type(exc).__name__}: {exc}")
