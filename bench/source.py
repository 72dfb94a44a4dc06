"""The source a benchmark measures: filled by the Simulator, published by one timed refresh.

:func:`simulate` runs ``producer.simulator.Simulator`` on a fresh database until it
holds the rows asked for; :func:`copy_rows` copies such a database into another
(``bench.producer --generator copy``); :func:`timed_refresh` publishes it in ONE
refresh, timed from the call until Kafka acknowledged the commit, with the CPU time
the refresh took in its own process, in the producer's row reader, in the broker and
the source's PostgreSQL server where they run on this machine (:mod:`bench.cpu`), and
on the whole machine.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bench.cpu import (
    MachineCpu,
    local_services,
    machine_cpu,
    process_cpu_seconds,
    services_cpu_seconds,
)
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
    "TimedRefresh",
    "copy_rows",
    "count_rows",
    "new_refresher",
    "service_addresses",
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
    #: CPU seconds of the broker and of the source's PostgreSQL server over the same time
    #: (``broker``, ``postgres``), each where it runs on this machine, with its children.
    services: dict[str, float] = field(default_factory=dict)


def timed_refresh(settings: Settings) -> TimedRefresh:
    """One refresh by a new Refresher, timed and with the CPU it took."""
    refresher = new_refresher(settings)  # topics, init_transactions, progress: not timed
    try:
        reader = refresher.row_reader.pid() if refresher.row_reader is not None else None
        reader_before = process_cpu_seconds(reader)
        services = local_services(service_addresses(settings))
        services_before = services_cpu_seconds(services)
        machine_before = machine_cpu()
        cpu = time.process_time()
        started = time.perf_counter()
        results = refresher.refresh()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        machine = machine_cpu() - machine_before
        services_after = services_cpu_seconds(services)
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
    took = {
        name: services_after[name] - services_before[name]
        for name in services_after.keys() & services_before.keys()
    }
    return TimedRefresh(results[0], seconds, cpu, reader_cpu, machine, took)


def service_addresses(settings: Settings) -> dict[str, str]:
    """``host:port`` of the broker (the first bootstrap server) and, for a PostgreSQL
    source, of its server: what :func:`bench.cpu.local_services` looks for."""
    found = {"broker": settings.kafka_bootstrap_servers.split(",")[0]}
    url = sa.make_url(settings.source_url)
    if url.get_backend_name() == "postgresql":
        found["postgres"] = f"{url.host or 'localhost'}:{url.port or 5432}"
    return found
