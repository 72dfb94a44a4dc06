#!/usr/bin/env python
"""Producer throughput: one refresh of N changed rows, PostgreSQL and SQLite, against Kafka.

For each backend the benchmark

1. fills a fresh source database (PostgreSQL: a database it creates and drops;
   SQLite: a temporary file) with about ``--rows`` changed rows across the six
   tables, written by ``producer.simulator.Simulator``
   (``--generator simulator``, the default), or simulated once into SQLite and
   bulk-copied into PostgreSQL (``--generator copy``: faster, same rows in both);
2. runs one refresh with a ``Refresher`` on a fresh topic prefix (new topics,
   ``settle_seconds=0``), timed from the call until Kafka acknowledged the
   commit: **queuestream events/s**; ``--refreshes`` times (3), each to topics
   and state of its own, and the median is the figure (every one is reported:
   on a shared 2-core machine one refresh can differ from the next by a
   fifth). Each refresh runs in a process started for
   it (bench/phases.py), so its **peak RSS** (``VmHWM``, the highest of them) is the refresh's own,
   beside the RSS that process had before the refresh and the growth, and the
   peak of the producer's row reader process (``reader_process``, read every
   0.1 s while it lives; ``total_peak_rss_mb`` adds both). The CPU an event is
   given for the refresh's process, its row reader, the broker and the source's
   PostgreSQL server (each where it runs on this machine: they share its two
   cores) and the whole machine, for the median refresh and for every one;
3. measures the **ceiling**: the committed messages of that refresh are read
   back, then produced again, byte for byte to the same partitions, by a plain
   confluent-kafka Producer with ``queuestream.kafka_clients.producer_config``
   (idempotent, transactional, same batching and compression) to a fresh topic
   set, in one transaction timed from begin to commit. The ratio
   queuestream/ceiling says how much of the client's and broker's capacity the
   Python side leaves unused.

Optional: ``--breakdown`` adds two Kafka-free passes over the same snapshot (read
rows only; read + build + encode with a no-op send) to split the time between
the database, the Python event pipeline and Kafka; ``--profile DIR`` runs one
more refresh under pyinstrument (cProfile when pyinstrument is not installed)
and writes the report to DIR.

    .venv/bin/python -m bench.producer                  # both backends, 200,000 rows
    .venv/bin/python -m bench.producer --rows 50000 --backends sqlite --json
    make bench                                          # starts Kafka and PostgreSQL first

Kafka: ``--bootstrap-servers``, else ``KAFKA_BOOTSTRAP_SERVERS``, else
``scripts/kafka-local.sh bootstrap`` (127.0.0.1:$KAFKA_PORT). PostgreSQL:
``--postgres-url`` (a server's maintenance database), else
``scripts/postgres-local.sh url``. Topics the benchmark created are deleted at the
end (``--keep-topics`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.environment import environment, environment_line
from bench.errors import BenchError
from bench.options import add_common_arguments, check_common_arguments
from bench.output import out, print_runs
from bench.phases import in_fresh_process, refresh_phase
from bench.producer_breakdown import encode_only_pass, profiled_refresh, read_only_pass
from bench.producer_ceiling import ceiling, read_back
from bench.scratch import postgres_database, sqlite_database
from bench.services import bench_settings, resolve_postgres
from bench.session import main_with, session
from bench.source import Generation, copy_rows, simulate

__all__ = ["BACKENDS", "GOAL_EVENTS_PER_SECOND", "Run", "main", "parse_args", "print_table", "run"]

BACKENDS = ("postgres", "sqlite")
GOAL_EVENTS_PER_SECOND = 75_000  # issue 10: from PostgreSQL and from SQLite

log = logging.getLogger("bench.producer")


# ----------------------------------------------------------------- options --


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.producer",
        description="Refresh throughput (events/s) of queuestream against Kafka, "
        "with the raw confluent-kafka ceiling for the same bytes.",
    )
    add_common_arguments(
        p,
        rows=200_000,
        each=("--backends", BACKENDS),
        kafka_help="librdkafka producer option for queuestream and the ceiling alike "
        "(settings.kafka), e.g. --kafka linger.ms=500; repeatable",
        breakdown_help="also time read-only and read+encode passes without Kafka",
        profile_help="run one more refresh per backend under a profiler; reports go to DIR",
    )
    p.add_argument(
        "--generator",
        choices=["simulator", "copy"],
        default="simulator",
        help="simulator: run the Simulator on each backend; copy: simulate into "
        "SQLite once and bulk-copy the rows into PostgreSQL",
    )
    p.add_argument("--no-ceiling", action="store_true", help="skip the raw-producer ceiling")
    p.add_argument(
        "--refreshes",
        type=int,
        default=3,
        help="refreshes of the same rows per backend, each to topics and state of its own "
        "in a process of its own; the median is the figure, peak RSS the highest (default: 3)",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.refreshes < 1:
        p.error("--refreshes must be at least 1")
    return args


# ----------------------------------------------------------------- figures --


@dataclass
class Run:
    backend: str
    rows: int
    events: int = 0
    seconds: float = 0.0
    messages: int = 0
    ceiling_messages: int = 0
    ceiling_seconds: float | None = None
    read_only_seconds: float | None = None
    encode_only_seconds: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    prefix: str = ""
    profile: str | None = None
    peak_rss_mb: float | None = None  # the refresh's process: its VmHWM
    rss_before_mb: float | None = None  # that process before the refresh (imports, set-up)
    rss_growth_mb: float | None = None
    row_reader_peak_rss_mb: float | None = None  # the producer's row reader process
    total_peak_rss_mb: float | None = None  # both processes' peaks added up
    events_per_second_each: list[float] = field(default_factory=list)  # every refresh's
    #: CPU microseconds an event took in the refresh's process (all its threads) and in
    #: the row reader, in the median refresh: what the machine's noise moves least.
    cpu_us_per_event: float | None = None
    reader_cpu_us_per_event: float | None = None
    #: the whole machine's CPU an event took (the broker's and the database's besides the
    #: two above), and the time the host stole from it, in the same refresh.
    machine_cpu_us_per_event: float | None = None
    steal_us_per_event: float | None = None
    #: of that, the broker's and the source's PostgreSQL server's (their children's too),
    #: where they run on this machine; None where they do not.
    broker_cpu_us_per_event: float | None = None
    postgres_cpu_us_per_event: float | None = None
    #: every refresh's, in order (:func:`_cpu_per_event`): which part a slow one lost.
    cpu_us_per_event_each: list[dict[str, float | None]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def ceiling_events_per_second(self) -> float | None:
        if not self.ceiling_seconds:
            return None
        return self.events / self.ceiling_seconds

    @property
    def ratio(self) -> float | None:
        ceiling = self.ceiling_events_per_second
        return self.events_per_second / ceiling if ceiling else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["events_per_second"] = round(self.events_per_second, 1)
        ceiling = self.ceiling_events_per_second
        data["ceiling_events_per_second"] = round(ceiling, 1) if ceiling else None
        data["ratio"] = round(self.ratio, 4) if self.ratio is not None else None
        for key in ("read_only", "encode_only"):
            secs = data[f"{key}_seconds"]
            data[f"{key}_events_per_second"] = round(self.events / secs, 1) if secs else None
        return data


def _per_event(cpu_seconds: float | None, events: int) -> float | None:
    return round(cpu_seconds * 1e6 / events, 2) if cpu_seconds is not None and events else None


def _cpu_per_event(refreshed: dict[str, Any]) -> dict[str, float | None]:
    """CPU microseconds an event took in one refresh: in its process (``refresh``), its row
    reader, the broker, PostgreSQL, the whole machine, and the time the host stole."""
    events = refreshed["events"]
    return {
        name: _per_event(refreshed[key], events)
        for name, key in (
            ("refresh", "cpu_seconds"),
            ("reader", "reader_cpu_seconds"),
            ("broker", "broker_cpu_seconds"),
            ("postgres", "postgres_cpu_seconds"),
            ("machine", "machine_cpu_seconds"),
            ("steal", "steal_seconds"),
        )
    }


# -------------------------------------------------------------------- main --


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[Run] = []
    generations: list[Generation] = []
    with session(args) as started, contextlib.ExitStack() as stack:
        deadline, progress, bootstrap = started.deadline, started.progress, started.bootstrap
        prefixes = started.prefixes
        urls: dict[str, str] = {}
        if "postgres" in args.backends:
            urls["postgres"] = stack.enter_context(postgres_database(resolve_postgres(args)))
        if "sqlite" in args.backends or args.generator == "copy":
            urls["sqlite"] = stack.enter_context(sqlite_database())

        # 1. rows
        if args.generator == "copy":
            progress(f"simulating {args.rows:,} rows into SQLite, then copying them")
            generations.append(
                simulate(urls["sqlite"], "sqlite", args.rows, args, deadline, progress)
            )
            if "postgres" in urls:
                generations.append(
                    copy_rows(urls["sqlite"], urls["postgres"], "postgres", deadline)
                )
        else:
            for backend in args.backends:
                progress(f"simulating {args.rows:,} rows into {backend}")
                generations.append(
                    simulate(urls[backend], backend, args.rows, args, deadline, progress)
                )
        for g in generations:
            progress(
                f"{g.backend}: {g.rows:,} rows by {g.method} in {g.seconds:.1f}s "
                f"({g.rows_per_second:,.0f} rows/s"
                + (f", {g.actions / g.seconds:,.0f} actions/s)" if g.actions else ")")
            )
        rows_by_backend = {g.backend: g.rows for g in generations}

        # 2. one refresh per backend, 3. its ceiling
        for backend in args.backends:
            deadline.check(f"starting the {backend} refresh")
            measured: list[tuple[str, dict[str, Any]]] = []
            for number in range(args.refreshes):
                deadline.check(f"the {backend} refresh")
                prefix = prefixes.new(backend, "qs")
                settings = bench_settings(urls[backend], bootstrap, prefix, args)
                progress(f"{backend}: refresh {number + 1} of {args.refreshes} to {prefix}.*")
                refreshed = in_fresh_process(
                    f"the {backend} refresh", deadline, args.verbose, refresh_phase, settings
                )
                progress(
                    f"{backend}: {refreshed['events']:,} events in {refreshed['seconds']:.2f}s"
                    f" = {refreshed['events'] / refreshed['seconds']:,.0f} events/s"
                )
                measured.append((prefix, refreshed))
            # The median refresh is the figure; memory is the highest of them all.
            prefix, refreshed = sorted(measured, key=lambda m: m[1]["seconds"])[len(measured) // 2]
            everything = [m[1] for m in measured]
            median = _cpu_per_event(refreshed)
            item = Run(
                backend,
                rows_by_backend[backend],
                refreshed["events"],
                refreshed["seconds"],
                messages=refreshed["events"] + 2,
                counts=refreshed["counts"],
                prefix=prefix,
                peak_rss_mb=max(m["peak_rss_mb"] for m in everything),
                rss_before_mb=max(m["rss_before_mb"] for m in everything),
                rss_growth_mb=max(m["rss_growth_mb"] for m in everything),
                row_reader_peak_rss_mb=max(m["helpers_peak_rss_mb"] for m in everything),
                total_peak_rss_mb=max(m["total_peak_rss_mb"] for m in everything),
                events_per_second_each=[round(m["events"] / m["seconds"], 1) for m in everything],
                cpu_us_per_event=median["refresh"],
                reader_cpu_us_per_event=median["reader"],
                machine_cpu_us_per_event=median["machine"],
                steal_us_per_event=median["steal"],
                broker_cpu_us_per_event=median["broker"],
                postgres_cpu_us_per_event=median["postgres"],
                cpu_us_per_event_each=[_cpu_per_event(m) for m in everything],
            )
            runs.append(item)
            progress(
                f"{backend}: median of {args.refreshes} refreshes {item.events:,} events in "
                f"{item.seconds:.2f}s = {item.events_per_second:,.0f} events/s, peak RSS "
                f"{item.peak_rss_mb} MB (+ row reader {item.row_reader_peak_rss_mb} MB), CPU "
                f"{item.cpu_us_per_event} us an event (+ row reader "
                f"{item.reader_cpu_us_per_event}; the machine {item.machine_cpu_us_per_event}, "
                f"of it the broker {item.broker_cpu_us_per_event} and PostgreSQL "
                f"{item.postgres_cpu_us_per_event}; stolen {item.steal_us_per_event})"
            )
            if item.events != item.rows:
                log.warning(
                    "%s: %d events for %d rows in the source", backend, item.events, item.rows
                )
            if not args.no_ceiling:
                messages = read_back(bootstrap, prefix, deadline)
                item.ceiling_messages = len(messages)
                if len(messages) != item.messages:
                    msg = (
                        f"{backend}: read back {len(messages)} committed messages, "
                        f"expected {item.messages}"
                    )
                    raise BenchError(msg)
                ceiling_prefix = prefixes.new(backend, "raw")
                raw = bench_settings(urls[backend], bootstrap, ceiling_prefix, args)
                item.ceiling_seconds = ceiling(messages, raw)
                del messages
                progress(
                    f"{backend}: ceiling {item.ceiling_events_per_second:,.0f} "
                    f"events/s ({item.ceiling_seconds:.2f}s)"
                )
            if args.breakdown:
                deadline.check(f"{backend} breakdown")
                seconds_read, count = read_only_pass(
                    bench_settings(urls[backend], bootstrap, prefixes.new(backend, "r"), args)
                )
                item.read_only_seconds = seconds_read
                item.encode_only_seconds = encode_only_pass(
                    bench_settings(urls[backend], bootstrap, prefixes.new(backend, "e"), args)
                )
                progress(
                    f"{backend}: read only {count / seconds_read:,.0f} rows/s; "
                    f"read+encode {item.events / item.encode_only_seconds:,.0f} events/s"
                )
            if args.profile:
                deadline.check(f"{backend} profile")
                profile_prefix = prefixes.new(backend, "prof")
                item.profile = profiled_refresh(
                    bench_settings(urls[backend], bootstrap, profile_prefix, args),
                    args.profile,
                    backend,
                )
                progress(f"{backend}: profile in {item.profile}")

    return {
        "rows_requested": args.rows,
        "generator": args.generator,
        "generation": [
            {
                **asdict(g),
                "rows_per_second": round(g.rows_per_second, 1),
                "actions_per_second": round(g.actions / g.seconds, 1) if g.actions else None,
            }
            for g in generations
        ],
        "runs": [r.as_dict() for r in runs],
        "goal_events_per_second": GOAL_EVENTS_PER_SECOND,
        "environment": environment(bootstrap, args),
    }


_COLUMNS = (
    ("backend", "{backend}"),
    ("rows", "{rows:,}"),
    ("events", "{events:,}"),
    ("seconds", "{seconds:.2f}"),
    ("events/s", "{events_per_second:,.0f}"),
    ("ceiling events/s", "{ceiling_events_per_second:,.0f}"),
    ("ratio", "{ratio:.2f}"),
    ("peak RSS MB", "{peak_rss_mb:.1f}"),
    ("+ reader MB", "{row_reader_peak_rss_mb:.1f}"),
)


def print_table(report: dict[str, Any]) -> None:
    title = f"queuestream producer, one refresh ({report['generator']} rows)"
    print_runs(
        title,
        _COLUMNS,
        report["runs"],
        caption="peak RSS: VmHWM of the process the refresh ran in (started for it), and "
        "of the producer's row reader process beside it",
    )
    for g in report["generation"]:
        speed = f"{g['rows_per_second']:,.0f} rows/s"
        if g["actions_per_second"]:
            speed += f", {g['actions_per_second']:,.0f} actions/s"
        out.print(
            f"rows in {g['backend']}: {g['rows']:,} by {g['method']} in "
            f"{g['seconds']:.1f}s ({speed})"
        )
    for r in report["runs"]:
        each = " / ".join(f"{rate:,.0f}" for rate in r["events_per_second_each"])
        out.print(f"{r['backend']}: each refresh {each} events/s (the median is the figure)")
        if r["read_only_events_per_second"]:
            out.print(
                f"{r['backend']} breakdown: read rows only "
                f"{r['read_only_events_per_second']:,.0f}/s; read+build+encode, no Kafka "
                f"{r['encode_only_events_per_second']:,.0f} events/s"
            )
        if r["profile"]:
            out.print(f"{r['backend']} profile: {r['profile']}")
    out.print(environment_line(report["environment"], "producer options"))
    for r in report["runs"]:
        verdict = "meets" if r["events_per_second"] >= report["goal_events_per_second"] else "below"
        out.print(
            f"goal ≥ {report['goal_events_per_second']:,} events/s from {r['backend']}: "
            f"{verdict} ({r['events_per_second']:,.0f})"
        )


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
