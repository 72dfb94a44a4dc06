"""The source a benchmark measures: filled by the Simulator, published by one timed refresh.

:func:`simulate` runs ``producer.simulator.Simulator`` on a fresh database until it
holds the rows asked for; :func:`copy_rows` copies such a database into another
(``bench.producer --generator copy``); :func:`timed_refresh` publishes it in ONE
refresh, timed from the call until Kafka acknowledged the commit, with the CPU time
the refresh took in its own process, in the producer's row reader and on the whole
machine (the broker's and the database's share is the difference).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bench.errors import BenchError, Deadline
from bench.output import Progress
from bench.scratch import ready_topics, writer_engine
from producer.refresh import Refresher, RefreshResult
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.settings import Settings
from queuestream.sync_schema import Base, create_source_schema
from queuestream.tables import TABLES

__all__ = [
    "SOURCE_TABLES",
    "Generation",
    "MachineCpu",
    "TimedRefresh",
    "copy_rows",
    "count_rows",
    "machine_cpu",
    "new_refresher",
    "process_cpu_seconds",
    "simulate",
    "timed_refresh",
]

SOURCE_TABLES = [spec.source for spec in TABLES]


def count_rows(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(Base.metadata.tables[t])
                ).scalar_one()
            )
            for t in SOURCE_TABLES
        }


@dataclass
class Generation:
    backend: str
    method: str
    rows: int
    seconds: float
    actions: int = 0
    per_table: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def simulate(
    url: str,
    backend: str,
    rows: int,
    args: argparse.Namespace,
    deadline: Deadline,
    progress: Progress,
) -> Generation:
    """Run the Simulator until the tables hold at least ``rows`` rows (all changed: fresh DB)."""
    engine = writer_engine(url)
    try:
        simulator = Simulator(engine, ZoneInfo("UTC"), seed=args.seed)
        started = time.perf_counter()
        actions = 0
        have = 0
        per_action = 2.0  # rows per action; measured as we go
        while have < rows:
            deadline.check(f"simulating rows in {backend}")
            chunk = int((rows - have) / per_action) + 1
            chunk = max(min(chunk, 20_000), min(args.per_transaction, 2_000))
            simulator.run(chunk, per_transaction=args.per_transaction)
            actions += chunk
            have = sum(count_rows(engine).values())
            per_action = max(have / actions, 0.5)
            elapsed = time.perf_counter() - started
            progress(
                f"{backend}: simulated {actions:,} actions, {have:,} rows "
                f"({have / elapsed:,.0f} rows/s)"
            )
        seconds = time.perf_counter() - started
        per_table = count_rows(engine)
    finally:
        engine.dispose()
    return Generation(backend, "simulator", sum(per_table.values()), seconds, actions, per_table)


def copy_rows(source_url: str, target_url: str, backend: str, deadline: Deadline) -> Generation:
    """Bulk-copy the six tables (fresh target), keeping every value and timestamp."""
    source = create_engine(source_url)
    target = writer_engine(target_url)
    started = time.perf_counter()
    try:
        create_source_schema(target)
        with source.connect() as src, target.begin() as dst:
            for name in SOURCE_TABLES:
                table = Base.metadata.tables[name]
                result = src.execution_options(yield_per=10_000).execute(sa.select(table))
                for chunk in result.mappings().partitions():
                    deadline.check(f"copying rows into {backend}")
                    dst.execute(sa.insert(table), [dict(r) for r in chunk])
        seconds = time.perf_counter() - started
        per_table = count_rows(target)
    finally:
        source.dispose()
        target.dispose()
    return Generation(backend, "copy", sum(per_table.values()), seconds, 0, per_table)


def new_refresher(settings: Settings) -> Refresher:
    ready_topics(settings)
    return Refresher(settings)


@dataclass(frozen=True)
class TimedRefresh:
    result: RefreshResult
    seconds: float  # from refresh() until the commit returned
    #: CPU seconds (user and system, every thread: librdkafka's, the state's writer)
    #: of the process the refresh ran in, and of its row reader (None without one).
    cpu_seconds: float
    reader_cpu_seconds: float | None
    #: the whole machine's over the same time: every process's, and the time stolen
    #: from this machine by its host.
    machine: MachineCpu


def timed_refresh(settings: Settings) -> TimedRefresh:
    """One refresh by a new Refresher, timed and with the CPU it took."""
    refresher = new_refresher(settings)  # topics, init_transactions, progress: not timed
    try:
        reader = refresher.row_reader.pid() if refresher.row_reader is not None else None
        reader_before = process_cpu_seconds(reader)
        machine_before = machine_cpu()
        cpu = time.process_time()
        started = time.perf_counter()
        results = refresher.refresh()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        machine = machine_cpu() - machine_before
        reader_after = process_cpu_seconds(reader)
        reader_cpu = (
            reader_after - reader_before
            if reader_after is not None and reader_before is not None
            else None
        )
    finally:
        refresher.close()
    if len(results) != 1:
        msg = f"expected one refresh result, got {len(results)}"
        raise BenchError(msg)
    return TimedRefresh(results[0], seconds, cpu, reader_cpu, machine)


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine, all cores together (``/proc/stat``)."""

    busy: float  # user, nice, system, irq and softirq: every process's work
    steal: float  # time the host gave to others while this machine wanted to run

    def __sub__(self, earlier: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - earlier.busy, self.steal - earlier.steal)


def machine_cpu() -> MachineCpu:
    """The machine's CPU seconds so far (the ``cpu`` line of ``/proc/stat``)."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return MachineCpu((user + nice + system + irq + softirq) / tick, steal / tick)


def process_cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
