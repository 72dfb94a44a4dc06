#!/usr/bin/env python
"""Point-in-time recovery and monitoring: how fast a target is rebuilt, how long a look takes.

The benchmark

1. fills a SQLite source with about ``--rows`` changed rows (the simulator) and
   publishes them in ``--refreshes`` refreshes to a fresh topic prefix;
2. for each target of ``--targets``, applies every event with the ordinary consumer
   (``ConsumerRuntime``, a fresh group, until idle) into a fresh PostgreSQL
   database: that is the **ceiling**, the same runtime doing the same work as a
   member of a group; then **rebuilds** the target as of now into another fresh
   database (``consumers.rebuild``: stop offsets looked up, every
   partition owned without a group, stops at the point in time; split across
   processes by partition number as ``queuestream rebuild`` splits it, one per core
   and per 25,000 offsets, or ``--rebuild-workers``). Both are timed
   the same way, from where each starts as a command would, before its target is
   named and its runtime made (the consumer then joins its group; the rebuild plans,
   then owns its partitions), to the commit of their last batch, when the target
   holds everything: the consumer then waits to be idle, the rebuild closes its
   clients (``rebuild_exit_seconds`` is until ``rebuild()`` returned). Until
   0.6.0 the consumer's time began at ``run()``, after its target's imports and
   its runtime were made, which the rebuild's included. Both targets are
   verified against the source. The ratio is the consumer's seconds over the
   rebuild's. Consume and rebuild are alternated ``--rounds`` times (3), each into
   fresh databases, and the medians reported beside each round's seconds: a run of
   4-5 s varies by a fifth from one round to the next on 2 cores. Each runs
   in a process started for it (bench/phases.py), so its **peak RSS** (``VmHWM``)
   is its own;
3. times one ``queuestream monitor`` snapshot (``SnapshotCollector.collect``) with
   the consumer's group caught up, then ``queuestream replay --to-earliest`` of that
   group (plan, then execute), then a snapshot again with the group lagging every
   event (which the monitor reads to count and age).

    .venv/bin/python -m bench.recovery                       # 50,000 rows, 5 refreshes
    .venv/bin/python -m bench.recovery --rows 20000 --targets accounting --json

Kafka and PostgreSQL as for bench/consumers.py (``make bench-recovery`` starts both).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.consuming import check_verified, consume
from bench.environment import environment, environment_line
from bench.errors import BenchError, Deadline
from bench.options import add_common_arguments, check_common_arguments
from bench.output import out, print_runs
from bench.phases import in_fresh_process
from bench.rss import PhaseMemory
from bench.scratch import postgres_database, sqlite_database
from bench.services import bench_settings, resolve_postgres
from bench.session import Session, main_with, session
from bench.source import simulate, timed_refresh
from consumers import TARGET_NAMES, target_named
from consumers.rebuild import plan_rebuild, rebuild, workers_for
from consumers.replay import ReplaySpec, execute_replay, plan_replay
from consumers.runtime import BatchOutcome
from queuestream.errors import QueuestreamError
from queuestream.monitor import SnapshotCollector
from queuestream.settings import Settings

__all__ = [
    "Run",
    "consume_phase",
    "main",
    "measure",
    "parse_args",
    "print_table",
    "rebuild_phase",
    "run",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.recovery",
        description="Rebuild as of a point in time vs the ordinary consumer of the same "
        "events; monitor snapshot and replay times.",
    )
    add_common_arguments(
        p,
        each=("--targets", TARGET_NAMES),
        rows=50_000,
        breakdown_help="(not used here)",
        profile_help="(not used here)",
        kafka_help="librdkafka option for every client (settings.kafka); repeatable",
    )
    p.add_argument(
        "--refreshes",
        type=int,
        default=5,
        help="refreshes the rows are published in (default: %(default)s)",
    )
    p.add_argument(
        "--rebuild-workers",
        type=int,
        metavar="N",
        help="processes the rebuild is split across (default: as queuestream rebuild "
        "chooses: one per core and per 25,000 offsets)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="consume then rebuild, each into fresh databases, this many times per target; "
        "the medians are reported, with each (default: %(default)s: one of 4-5 s varies by "
        "a fifth from one round to the next)",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.refreshes < 1:
        p.error("--refreshes must be at least 1")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.rebuild_workers is not None and args.rebuild_workers < 1:
        p.error("--rebuild-workers must be at least 1")
    if args.breakdown or args.profile:
        p.error("--breakdown and --profile are not measured here (see bench/consumers.py)")
    return args


@dataclass
class Run:
    """One target's figures: the medians of its rounds, and each round's seconds."""

    target: str
    events: int
    consume_seconds: float = 0.0
    rebuild_seconds: float = 0.0
    rebuild_plan_seconds: float = 0.0
    rebuild_exit_seconds: float = 0.0
    refreshes: int = 0
    rebuild_workers: int = 0
    consume_peak_rss_mb: float = 0.0  # VmHWM of the process each ran in (the highest)
    rebuild_peak_rss_mb: float = 0.0
    rebuild_total_peak_rss_mb: float = 0.0  # with its workers' peaks added
    consume_seconds_each: list[float] = field(default_factory=list)
    rebuild_seconds_each: list[float] = field(default_factory=list)
    rebuild_plan_seconds_each: list[float] = field(default_factory=list)
    rebuild_exit_seconds_each: list[float] = field(default_factory=list)

    def add_round(self, consumed: dict[str, Any], rebuilt: dict[str, Any]) -> None:
        self.consume_seconds_each.append(round(consumed["seconds"], 3))
        self.rebuild_seconds_each.append(round(rebuilt["seconds"], 3))
        self.rebuild_plan_seconds_each.append(round(rebuilt["plan_seconds"], 3))
        self.rebuild_exit_seconds_each.append(round(rebuilt["exit_seconds"], 3))
        self.consume_seconds = statistics.median(self.consume_seconds_each)
        self.rebuild_seconds = statistics.median(self.rebuild_seconds_each)
        self.rebuild_plan_seconds = statistics.median(self.rebuild_plan_seconds_each)
        self.rebuild_exit_seconds = statistics.median(self.rebuild_exit_seconds_each)
        self.refreshes = rebuilt["refreshes"]
        self.rebuild_workers = rebuilt["workers"]
        self.consume_peak_rss_mb = max(self.consume_peak_rss_mb, consumed["peak_rss_mb"])
        self.rebuild_peak_rss_mb = max(self.rebuild_peak_rss_mb, rebuilt["peak_rss_mb"])
        self.rebuild_total_peak_rss_mb = max(
            self.rebuild_total_peak_rss_mb, rebuilt["total_peak_rss_mb"]
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["consume_rows_per_second"] = round(self.events / self.consume_seconds, 1)
        data["rebuild_rows_per_second"] = round(self.events / self.rebuild_seconds, 1)
        data["ratio"] = round(self.consume_seconds / self.rebuild_seconds, 3)
        data["ratio_each"] = [
            round(c / r, 3)
            for c, r in zip(self.consume_seconds_each, self.rebuild_seconds_each, strict=True)
        ]
        return data


def _timed_snapshot(settings: Settings, group: str) -> tuple[float, int]:
    """Seconds for one monitor snapshot, and the group's lag in messages then."""
    collector = SnapshotCollector(settings, groups=[group])
    try:
        started = time.perf_counter()
        snapshot = collector.collect()
        seconds = time.perf_counter() - started
    finally:
        collector.close()
    found = snapshot.group(group)
    return seconds, 0 if found is None else found.lag_messages


def consume_phase(settings: Settings, name: str, deadline: Deadline) -> dict[str, Any]:
    """The ordinary consumer until idle, in the process :func:`measure` started for it."""
    memory = PhaseMemory()
    consumed = consume(settings, name, deadline)
    return {"seconds": consumed.batches[-1][0] - consumed.began, **memory.figures()}


def rebuild_phase(settings: Settings, name: str, workers: int | None) -> dict[str, Any]:
    """A rebuild as of now, in the process :func:`measure` started for it."""
    memory = PhaseMemory()
    started = time.perf_counter()
    last_batch = started
    try:
        plan = plan_rebuild(settings, name, datetime.now(UTC))
        workers = workers_for(plan, workers)
        planned = time.perf_counter()

        def committed(_outcome: BatchOutcome) -> None:
            nonlocal last_batch
            last_batch = time.perf_counter()

        stats = rebuild(settings, plan, workers=workers, on_batch=committed)
    except QueuestreamError as exc:
        msg = f"{name}: rebuild failed: {type(exc).__name__}: {exc}"
        raise BenchError(msg) from exc
    return {
        "seconds": last_batch - started,
        "exit_seconds": time.perf_counter() - started,
        "plan_seconds": planned - started,
        "refreshes": stats.refreshes,
        "workers": workers,
        **memory.figures(),
    }


def measure(
    name: str, settings: Settings, events: int, args: argparse.Namespace, bench_session: Session
) -> tuple[Run, dict[str, Any]]:
    deadline, progress = bench_session.deadline, bench_session.progress
    item = Run(name, events)
    group = ""
    url = ""
    with ExitStack() as kept:  # the last round's consumer target and group: looked at below
        for number in range(1, args.rounds + 1):
            kept.close()
            group = f"bench-{uuid.uuid4().hex[:8]}-{name}"
            url = kept.enter_context(postgres_database(str(args.postgres_url)))
            live = settings.model_copy(update={"target_url": url, "consumer_group": group})
            of = f"{name} ({number} of {args.rounds})"
            progress(f"{of}: consuming {events:,} events into a fresh database (the ceiling)")
            consumed = in_fresh_process(
                f"consuming into {name}",
                deadline,
                args.verbose,
                consume_phase,
                live,
                name,
                deadline,
            )
            check_verified(live, name)
            progress(
                f"{of}: consumed in {consumed['seconds']:.2f}s (peak RSS "
                f"{consumed['peak_rss_mb']} MB); rebuilding as of now"
            )
            with postgres_database(str(args.postgres_url)) as rebuilt_url:
                rebuilt = settings.model_copy(update={"target_url": rebuilt_url})
                done = in_fresh_process(
                    f"rebuilding {name}",
                    deadline,
                    args.verbose,
                    rebuild_phase,
                    rebuilt,
                    name,
                    args.rebuild_workers,
                )
                check_verified(rebuilt, name)
            item.add_round(consumed, done)
            progress(
                f"{of}: rebuilt in {done['seconds']:.2f}s (returned after "
                f"{done['exit_seconds']:.2f}s; {done['refreshes']} refreshes, "
                f"{done['workers']} processes, peak RSS {done['total_peak_rss_mb']} MB in all)"
            )
        live = settings.model_copy(update={"target_url": url, "consumer_group": group})
        caught_up_seconds, caught_up_lag = _timed_snapshot(settings, group)
        started = time.perf_counter()
        replay = plan_replay(live, group, ReplaySpec(to_earliest=True), target_url=url)
        plan_seconds = time.perf_counter() - started
        execute_replay(live, replay)
        execute_seconds = time.perf_counter() - started - plan_seconds
        lagging_seconds, lagging_lag = _timed_snapshot(settings, group)
    looks = {
        "target": name,
        "snapshot_caught_up_seconds": round(caught_up_seconds, 3),
        "lag_caught_up": caught_up_lag,
        "replay_plan_seconds": round(plan_seconds, 3),
        "replay_execute_seconds": round(execute_seconds, 3),
        "replay_partitions": len(replay.moves),
        "snapshot_lagging_seconds": round(lagging_seconds, 3),
        "lag_lagging": lagging_lag,
    }
    progress(
        f"{name}: monitor snapshot {caught_up_seconds:.2f}s caught up, {lagging_seconds:.2f}s "
        f"lagging {lagging_lag:,} messages; replay plan {plan_seconds:.2f}s, "
        f"execute {execute_seconds:.2f}s"
    )
    return item, looks


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[Run] = []
    looks: list[dict[str, Any]] = []
    with session(args) as started, sqlite_database() as source_url:
        deadline, progress = started.deadline, started.progress
        args.postgres_url = resolve_postgres(args)
        prefix = started.prefixes.new("sqlite", "recovery")
        settings = bench_settings(source_url, started.bootstrap, prefix, args)
        counts: dict[str, int] = {}
        for i in range(1, args.refreshes + 1):
            simulate(
                source_url, "sqlite", args.rows * i // args.refreshes, args, deadline, progress
            )
            timed = timed_refresh(settings)
            result, seconds = timed.result, timed.seconds
            for table, n in result.counts.items():
                counts[table] = counts.get(table, 0) + n
            progress(f"refresh {i}/{args.refreshes}: {result.events:,} events in {seconds:.2f}s")
        settings = settings.model_copy(update={"idle_seconds": 1.0})
        for name in args.targets:
            deadline.check(f"measuring {name}")
            tables = target_named(name).tables
            events = sum(counts.get(t, 0) for t in tables)
            item, look = measure(name, settings, events, args, started)
            runs.append(item)
            looks.append(look)
    return {
        "rows_requested": args.rows,
        "refreshes": args.refreshes,
        "events": sum(counts.values()),
        "runs": [r.as_dict() for r in runs],
        "looks": looks,
        "environment": environment(started.bootstrap, args),
    }


_COLUMNS = (
    ("target", "{target}"),
    ("events", "{events:,}"),
    ("refreshes", "{refreshes}"),
    ("consume s", "{consume_seconds:.2f}"),
    ("consume rows/s", "{consume_rows_per_second:,.0f}"),
    ("rebuild s", "{rebuild_seconds:.2f}"),
    ("rebuild rows/s", "{rebuild_rows_per_second:,.0f}"),
    ("workers", "{rebuild_workers}"),
    ("ratio", "{ratio:.2f}"),
    ("consume peak RSS MB", "{consume_peak_rss_mb:.1f}"),
    ("rebuild peak RSS MB", "{rebuild_total_peak_rss_mb:.1f}"),
)


def print_table(report: dict[str, Any]) -> None:
    print_runs(
        "queuestream rebuild as of now vs the ordinary consumer, into PostgreSQL",
        _COLUMNS,
        report["runs"],
        caption="consume: ConsumerRuntime (fresh group) until idle = the ceiling; rebuild: "
        "plan_rebuild + rebuild (its workers: processes sharing the partitions); both to "
        "their last batch's commit, medians of --rounds alternated rounds; ratio: consume "
        "seconds over rebuild seconds; peak RSS: VmHWM of the process each ran in (started "
        "for it), the rebuild's workers' added",
    )
    for look in report["looks"]:
        out.print(
            f"{look['target']}: monitor snapshot {look['snapshot_caught_up_seconds']:.2f}s "
            f"(caught up, lag {look['lag_caught_up']}), "
            f"{look['snapshot_lagging_seconds']:.2f}s (lagging {look['lag_lagging']:,}); "
            f"replay --to-earliest of {look['replay_partitions']} partitions: plan "
            f"{look['replay_plan_seconds']:.2f}s, execute {look['replay_execute_seconds']:.2f}s"
        )
    out.print(environment_line(report["environment"], "Kafka options"))


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
