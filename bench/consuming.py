"""One consumer run as the benchmarks time it, and the target it leaves, counted and verified.

:func:`consume` runs one ``ConsumerRuntime`` until idle (or the deadline) and
notes when it started, when the first change event arrived and when each batch
committed; bench.consumers and bench.recovery time their figures from those.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from bench.errors import BenchError, Deadline
from bench.scratch import writer_engine
from consumers import target_named
from consumers.assembly import Assembler
from consumers.changes import Change
from consumers.runtime import BatchOutcome, ConsumerRuntime
from consumers.target import Target
from consumers.verify import verify
from queuestream.errors import QueuestreamError
from queuestream.settings import Settings

__all__ = ["Consumed", "check_verified", "consume", "count_target_rows"]


class _FirstChange(Assembler):
    """The runtime's Assembler, noting when the first change arrived and how many did."""

    def __init__(self) -> None:
        super().__init__()
        self.first: float | None = None
        self.changes = 0

    def add(self, change: Change) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.changes += 1
        super().add(change)


@dataclass
class Consumed:
    """What :func:`consume` noted: monotonic times, counts and every batch with its time."""

    started: float  # when run() was called
    first_change: float | None
    changes: int
    batches: list[tuple[float, BatchOutcome]]  # (when on_batch ran, the outcome)
    rows_applied: int
    stale: int
    errors: int
    #: Before the target was named and the runtime made (imports, codec, engine): where
    #: a command starting up would start; bench.recovery times the rebuild from there too.
    began: float = 0.0


def consume(settings: Settings, name: str, deadline: Deadline) -> Consumed:
    """Run one consumer of ``name`` until idle (or the deadline) and note the times."""
    began = time.monotonic()
    batches: list[tuple[float, BatchOutcome]] = []
    engine = writer_engine(settings.target_url_for(name))
    stop = threading.Event()
    timer = threading.Timer(max(deadline.left(), 0.0), stop.set)
    timer.daemon = True
    try:
        # Given to the runtime, not set on it afterwards: its Streaming part keeps the
        # assembler it was made with, and one set afterwards left it an empty one (until
        # 0.7.0 this benchmark's consumer could never apply a refresh in parts, so it
        # held whole backlogs: 1.15 GB for 16 refreshes, where `consume` streams).
        first = _FirstChange()
        runtime = ConsumerRuntime(
            settings,
            target_named(name),
            engine=engine,
            until_idle=True,
            stop=stop,
            on_batch=lambda outcome: batches.append((time.monotonic(), outcome)),
            assembler=first,
        )
        assert runtime.streaming.assembler is first
        timer.start()
        started = time.monotonic()
        stats = runtime.run()
    except QueuestreamError as exc:
        msg = f"{name}: the consumer failed: {type(exc).__name__}: {exc}"
        raise BenchError(msg) from exc
    finally:
        timer.cancel()
        engine.dispose()
    if stop.is_set():
        deadline.check(f"consuming into {name}")
    return Consumed(
        started, first.first, first.changes, batches, stats.rows, stats.stale, stats.errors, began
    )


def count_target_rows(target: Target, url: str) -> dict[str, int]:
    engine = writer_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in target.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def check_verified(settings: Settings, name: str) -> None:
    """Fail the run unless the target equals what the source says it should hold."""
    try:
        reconciliation = verify(settings, name)
    except QueuestreamError as exc:
        msg = f"{name}: verify failed: {type(exc).__name__}: {exc}"
        raise BenchError(msg) from exc
    if not reconciliation.ok:
        wrong = [c.as_dict() for c in reconciliation.checks if not c.ok]
        msg = f"{name}: the target differs from the source: {wrong}"
        raise BenchError(msg)
