#!/usr/bin/env python
"""Consumer throughput: rows applied per second into PostgreSQL (or SQLite) by one consumer.

The benchmark

1. fills a SQLite source (a temporary file) with about ``--rows`` changed rows
   across the six tables, written by ``producer.simulator.Simulator``,
   and publishes them in ONE refresh (a ``Refresher``) to a fresh topic prefix
   (``--partitions`` per topic, default 6). Every target consumes that same refresh;
2. for each target of ``--targets`` (accounting, shipping), runs ONE
   ``ConsumerRuntime`` (a fresh consumer group, ``until_idle=True``) into a fresh
   PostgreSQL database (a SQLite file with ``--target-db sqlite``) and measures

   - **end to end**: events / seconds from ``runtime.run()`` until the last batch
     committed (includes creating the target's tables, the group join and the
     partition assignment; excludes the idle wait before it stops);
   - **apply**: events / seconds from the first change event fetched (the first
     decoded change handed to the runtime's Assembler) until the last batch
     committed: fetching the rest, decoding, assembling and the target
     transaction(s). ``batch seconds`` is the part inside the runtime's apply
     (``BatchOutcome.seconds``: target SQL and mapping, offsets, sync log, the
     group commit).

   *events* are the refresh's change events on the topics the target consumes
   (``Target.tables``): the source rows it applies, one event per row;
3. measures the **ceiling**, without Kafka and without the consumer: exactly the
   rows the consumer left in its target tables are read back and written into
   empty copies of the same tables (``Target.create_schema`` on another fresh
   database) in one transaction, timed from begin to commit, both by psycopg binary
   ``COPY ... FROM STDIN`` (``copy``: the fastest way PostgreSQL takes rows) and by
   plain SQLAlchemy Core executemany INSERTs (``insert``: psycopg 3's
   ``executemany``, one prepared INSERT a row, pipelined; the ceiling used before,
   kept beside it). ``--ceiling`` names the one the ratio is taken against (default
   copy; on SQLite only insert exists). A ceiling's rows/s counts the same events
   over the ceiling's seconds, so the ratio consumer/ceiling (apply rows/s over
   ceiling rows/s) is the ceiling's time over the consumer's: how close the
   consumer comes to merely writing its result;
4. checks the target against the source (``consumers.verify.verify``)
   and fails the run when they differ.

Optional: ``--peer debezium`` publishes the refresh in registry mode and runs
Debezium's JDBC sink over each target's topics into a fresh database on the same
server, in the same run, and prints the ratio of the consumer's apply rows/s to the
sink's (bench/debezium_peer.py says how it is timed). ``--breakdown`` reads the
target's committed messages back from Kafka (timed: fetch), decodes them with
``decode_change`` (timed: decode) and applies them with ``Target.apply`` in one
transaction to another fresh database (timed: target apply, i.e. mapping in Python
plus SQL), to split the time between Kafka,
decoding and the target; ``--profile DIR`` runs one more consumer per target (fresh
group and database) under pyinstrument (cProfile when pyinstrument is not installed)
and writes the report to DIR. The JSON holds the process's peak RSS (``peak_rss_mb``,
``resource.getrusage``: the whole run, the simulation and every consumer included).

    .venv/bin/python -m bench.consumers                  # both targets, 100,000 rows
    .venv/bin/python -m bench.consumers --rows 20000 --targets shipping --json
    .venv/bin/python -m bench.consumers --breakdown --profile var/bench-profile
    .venv/bin/python -m bench.consumers --target-db sqlite --rows 20000
    .venv/bin/python -m bench.consumers --peer debezium

(About 450 lines: the run, its figures and their table read best whole; what the peer
does is in bench/debezium_peer.py.)

Kafka: ``--bootstrap-servers``, else ``KAFKA_BOOTSTRAP_SERVERS``, else
``scripts/kafka-local.sh bootstrap``. PostgreSQL: ``--postgres-url`` (a server's
maintenance database), else ``scripts/postgres-local.sh url``. The databases are
dropped and the topics deleted at the end (``--keep-topics`` keeps the topics).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.consumer_breakdown import breakdown
from bench.consumer_ceiling import CEILING_NAMES, CEILINGS, ceiling
from bench.consuming import check_verified, consume, count_target_rows
from bench.debezium_peer import PEERS, measure_peer, peer_services, warm_up
from bench.environment import environment, environment_line
from bench.errors import BenchError, Deadline
from bench.options import add_common_arguments, check_common_arguments
from bench.output import Progress, out, print_runs
from bench.profiling import profiled
from bench.scratch import postgres_database, sqlite_database
from bench.services import bench_settings, resolve_postgres
from bench.session import main_with, session
from bench.source import simulate, timed_refresh
from consumers import TARGET_NAMES, target_named
from queuestream.settings import Settings

__all__ = ["GOAL_ROWS_PER_SECOND", "Run", "main", "measure", "parse_args", "print_table", "run"]

GOAL_ROWS_PER_SECOND = 30_000  # issue 10's goal, per consumer instance, into PostgreSQL
TARGET_DBS = ("postgresql", "sqlite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--targets`` becomes a list, ``--kafka`` a dict."""
    p = argparse.ArgumentParser(
        prog="python -m bench.consumers",
        description="Rows applied per second into PostgreSQL (or SQLite) by one consumer "
        "instance, with the binary-COPY and plain-INSERT ceilings for the same target rows.",
    )
    add_common_arguments(
        p,
        each=("--targets", TARGET_NAMES),
        rows=100_000,
        breakdown_help="also time fetch, decode and Target.apply separately, without the runtime",
        profile_help="run one more consumer per target under a profiler; reports go to DIR",
        kafka_help="librdkafka option for the refresh's producer and the consumer alike "
        "(settings.kafka), e.g. --kafka fetch.min.bytes=1048576; repeatable",
    )
    p.add_argument(
        "--ceiling",
        choices=CEILINGS,
        default="copy",
        help="the ceiling the ratio is taken against: copy (psycopg binary COPY) or insert "
        "(SQLAlchemy Core executemany); both are measured (default: %(default)s; "
        "insert on SQLite)",
    )
    p.add_argument(
        "--target-db",
        choices=TARGET_DBS,
        default="postgresql",
        help="the targets' database: a fresh PostgreSQL database or SQLite file per "
        "measurement (default: %(default)s)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=1.0,
        help="the consumer stops after this long with nothing to apply; not part of any "
        "timing (default: %(default)s)",
    )
    p.add_argument(
        "--peer",
        choices=PEERS,
        help="also run Debezium's JDBC sink (Kafka Connect) over the same events into "
        "PostgreSQL and print the ratio; publishes in registry mode",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.peer and args.target_db != "postgresql":
        p.error("--peer debezium writes into PostgreSQL: leave --target-db at postgresql")
    if args.idle_seconds <= 0:
        p.error("--idle-seconds must be positive")
    if args.target_db == "sqlite":
        args.ceiling = "insert"  # SQLite has no COPY
    return args


# --------------------------------------------------------------- the run --


@dataclass
class Run:
    """One target's figures; seconds here, rates (events per second) in :meth:`as_dict`."""

    target: str
    events: int  # change events on the target's topics: the source rows it applies
    rows_applied: int = 0  # target rows the runtime changed (RunStats.rows)
    stale: int = 0
    batches: int = 0
    seconds: float = 0.0  # run() -> last batch committed
    apply_seconds: float = 0.0  # first event fetched -> last batch committed
    batch_seconds: float = 0.0  # sum of BatchOutcome.seconds
    target_rows: dict[str, int] = field(default_factory=dict)
    ceiling_method: str = ""
    ceiling_seconds: float | None = None  # the ceiling of --ceiling: the ratio's
    copy_ceiling_seconds: float | None = None  # psycopg binary COPY (PostgreSQL only)
    insert_ceiling_seconds: float | None = None  # SQLAlchemy Core executemany INSERT
    fetch_seconds: float | None = None
    decode_seconds: float | None = None
    target_apply_seconds: float | None = None
    verified: bool = False
    profile: str | None = None
    peer: dict[str, Any] | None = None  # --peer: PeerRun.as_dict()

    def rate(self, seconds: float | None) -> float | None:
        """Events per second over ``seconds``."""
        return round(self.events / seconds, 1) if seconds else None

    def as_dict(self) -> dict[str, Any]:
        """The fields, with every rate, and the ratios consumer/ceiling.

        ``ceiling_rows_per_second`` counts the consumer's events over the ceiling's
        seconds (the consumer's unit), so ``ratio`` (apply) and ``ratio_end_to_end``
        are the ceiling's seconds over the consumer's.
        """
        data = asdict(self)
        data["target_rows_total"] = total = sum(self.target_rows.values())
        rated = ("", "apply_", "ceiling_", "copy_ceiling_", "insert_ceiling_")
        for name in (*rated, "fetch_", "decode_", "target_apply_"):
            data[f"{name}rows_per_second"] = self.rate(data[f"{name}seconds"])
        ceiling = self.ceiling_seconds
        data["ceiling_target_rows_per_second"] = round(total / ceiling, 1) if ceiling else None
        data["ratio"] = round(ceiling / self.apply_seconds, 4) if ceiling else None
        data["ratio_end_to_end"] = round(ceiling / self.seconds, 4) if ceiling else None
        if self.peer is not None:  # the consumer's apply rows/s over the peer's
            data["peer_ratio"] = round(self.peer["apply_seconds"] / self.apply_seconds, 4)
        return data


# -------------------------------------------------------------------- main --


@contextlib.contextmanager
def _target_database(args: argparse.Namespace) -> Iterator[str]:
    """A fresh target database of ``--target-db``: its URL, dropped afterwards."""
    if args.target_db == "sqlite":
        with sqlite_database() as url:
            yield url
    else:
        with postgres_database(str(args.postgres_url)) as url:
            yield url


def _server(args: argparse.Namespace) -> str | None:
    """The PostgreSQL server of the targets, or None for SQLite."""
    return None if args.target_db == "sqlite" else str(args.postgres_url)


def measure(
    name: str,
    settings: Settings,
    events: int,
    args: argparse.Namespace,
    deadline: Deadline,
    progress: Progress,
) -> Run:
    """One consumer of ``name`` into a fresh database, its ceilings and verification."""
    server = _server(args)
    target = target_named(name)
    item = Run(name, events)
    with _target_database(args) as url:
        consumer_settings = settings.model_copy(
            update={"target_url": url, "consumer_group": f"bench-{uuid.uuid4().hex[:8]}-{name}"}
        )
        progress(f"{name}: consuming {events:,} events into a fresh database")
        consumed = consume(consumer_settings, name, deadline)
        if consumed.changes != events or not consumed.batches or consumed.first_change is None:
            msg = (
                f"{name}: the consumer took {consumed.changes:,} of {events:,} events in "
                f"{len(consumed.batches)} batches"
            )
            raise BenchError(msg)
        if consumed.errors:
            msg = f"{name}: {consumed.errors} events could not be applied"
            raise BenchError(msg)
        last = consumed.batches[-1][0]
        item.seconds = last - consumed.started
        item.apply_seconds = last - consumed.first_change
        item.batch_seconds = sum(outcome.seconds for _, outcome in consumed.batches)
        item.batches = len(consumed.batches)
        item.rows_applied, item.stale = consumed.rows_applied, consumed.stale
        item.target_rows = count_target_rows(target, url)
        progress(
            f"{name}: {events:,} events in {item.seconds:.2f}s end to end = "
            f"{item.rate(item.seconds):,.0f} rows/s; apply {item.apply_seconds:.2f}s = "
            f"{item.rate(item.apply_seconds):,.0f} rows/s ({item.batches} batches, "
            f"{item.batch_seconds:.2f}s in them)"
        )

        progress(f"{name}: verifying the target against the source")
        check_verified(consumer_settings, name)
        item.verified = True

        item.ceiling_method = CEILING_NAMES[args.ceiling]
        for method in CEILINGS if server is not None else ("insert",):
            deadline.check(f"{name} ceiling ({method})")
            seconds = ceiling(target, url, server, method)
            setattr(item, f"{method}_ceiling_seconds", seconds)
            if method == args.ceiling:
                item.ceiling_seconds = seconds
            progress(
                f"{name}: ceiling ({method}) {sum(item.target_rows.values()):,} target rows "
                f"in {seconds:.2f}s = {item.rate(seconds):,.0f} rows/s"
            )

    if args.breakdown:
        deadline.check(f"{name} breakdown")
        fetch, decode, apply, decoded = breakdown(target, settings, server, deadline)
        if decoded != events:
            msg = f"{name} breakdown: read back {decoded:,} events, expected {events:,}"
            raise BenchError(msg)
        item.fetch_seconds, item.decode_seconds, item.target_apply_seconds = fetch, decode, apply
        progress(f"{name}: fetch {fetch:.2f}s, decode {decode:.2f}s, Target.apply {apply:.2f}s")

    if args.profile:
        deadline.check(f"{name} profile")
        with _target_database(args) as url:
            profile_settings = settings.model_copy(
                update={
                    "target_url": url,
                    "consumer_group": f"bench-{uuid.uuid4().hex[:8]}-{name}-profile",
                }
            )
            item.profile = profiled(
                lambda: consume(profile_settings, name, deadline), args.profile, f"consume-{name}"
            )
        progress(f"{name}: profile in {item.profile}")
    return item


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        started = stack.enter_context(session(args))
        source_url = stack.enter_context(sqlite_database())
        deadline, progress = started.deadline, started.progress
        peer = None
        if args.peer:
            peer = stack.enter_context(peer_services(started.bootstrap, progress))
        if args.target_db == "postgresql":
            args.postgres_url = resolve_postgres(args)
            with postgres_database(args.postgres_url):
                pass  # reachable: fail now rather than after the simulation
        progress(f"simulating {args.rows:,} rows into SQLite")
        generation = simulate(source_url, "sqlite", args.rows, args, deadline, progress)
        progress(
            f"{generation.rows:,} rows in {generation.seconds:.1f}s "
            f"({generation.rows_per_second:,.0f} rows/s)"
        )
        prefix = started.prefixes.new("sqlite", "consumers")
        settings = bench_settings(
            source_url, started.bootstrap, prefix, args, idle_seconds=args.idle_seconds
        )
        if peer is not None:  # the Connect path is registry mode
            settings = settings.model_copy(update={"schema_registry_url": peer.registry_url})
        progress(f"refresh to {prefix}.*")
        timed = timed_refresh(settings)
        result, refresh_seconds = timed.result, timed.seconds
        progress(f"{result.events:,} events in {refresh_seconds:.2f}s")
        if peer is not None:
            first = args.targets[0]
            events = sum(result.counts.get(t, 0) for t in target_named(first).tables)
            warm_up(first, settings, events, str(args.postgres_url), peer, deadline, progress)
        for name in args.targets:
            deadline.check(f"starting the {name} consumer")
            events = sum(result.counts.get(t, 0) for t in target_named(name).tables)
            runs.append(measure(name, settings, events, args, deadline, progress))
            if peer is not None:
                deadline.check(f"starting Debezium's sink for {name}")
                server = str(args.postgres_url)
                found = measure_peer(name, settings, events, server, peer, deadline, progress)
                runs[-1].peer = found.as_dict()

    return {
        "rows_requested": args.rows,
        "generation": {
            **asdict(generation),
            "rows_per_second": round(generation.rows_per_second, 1),
        },
        "refresh": {
            "prefix": prefix,
            "events": result.events,
            "counts": dict(result.counts),
            "seconds": round(refresh_seconds, 3),
        },
        "target_db": args.target_db,
        "ceiling": CEILING_NAMES[args.ceiling],
        "peer": args.peer,
        "runs": [r.as_dict() for r in runs],
        "goal_rows_per_second": GOAL_ROWS_PER_SECOND,
        # Peak RSS of this process (the whole run: simulation, refresh, every consumer),
        # from resource.getrusage (ru_maxrss in KiB on Linux).
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "environment": environment(started.bootstrap, args),
    }


_COLUMNS = (
    ("target", "{target}"),
    ("events", "{events:,}"),
    ("e2e s", "{seconds:.2f}"),
    ("e2e rows/s", "{rows_per_second:,.0f}"),
    ("apply s", "{apply_seconds:.2f}"),
    ("rows/s", "{apply_rows_per_second:,.0f}"),
    ("ceiling", "{ceiling_rows_per_second:,.0f}"),
    ("ratio", "{ratio:.2f}"),
    ("insert ceiling", "{insert_ceiling_rows_per_second:,.0f}"),
)


def print_table(report: dict[str, Any]) -> None:
    database = "SQLite" if report["target_db"] == "sqlite" else "PostgreSQL"
    print_runs(
        f"queuestream consumers: one instance into {database}",
        _COLUMNS,
        report["runs"],
        caption="rows/s: events (source rows) per second; apply: first event fetched to last "
        f"commit; e2e: run() to last commit; ceiling: the same events over the time of "
        f"{report['ceiling']}; ratio: apply rows/s over ceiling; insert ceiling: over the "
        "time of executemany INSERTs",
    )
    g, refresh = report["generation"], report["refresh"]
    out.print(
        f"source: {g['rows']:,} rows in SQLite by the simulator in {g['seconds']:.1f}s; "
        f"one refresh of {refresh['events']:,} events in {refresh['seconds']:.2f}s"
    )
    for r in report["runs"]:
        out.print(
            f"{r['target']}: {r['batches']} batches, {r['batch_seconds']:.2f}s inside them; "
            f"{r['rows_applied']:,} target rows changed, {r['stale']:,} stale; verified "
            f"{'ok' if r['verified'] else 'NOT ok'}; ceiling ({report['ceiling']}) "
            f"{r['target_rows_total']:,} target rows in {r['ceiling_seconds']:.2f}s "
            f"({r['ceiling_target_rows_per_second']:,.0f} target rows/s)"
        )
        if r["copy_ceiling_seconds"] is not None and r["insert_ceiling_seconds"] is not None:
            out.print(
                f"{r['target']} ceilings: binary COPY {r['copy_ceiling_seconds']:.2f}s "
                f"({r['copy_ceiling_rows_per_second']:,.0f}/s), executemany INSERT "
                f"{r['insert_ceiling_seconds']:.2f}s ({r['insert_ceiling_rows_per_second']:,.0f}/s)"
            )
        if r["decode_seconds"] is not None:
            out.print(
                f"{r['target']} breakdown, no runtime: fetch {r['fetch_seconds']:.2f}s, "
                f"decode {r['decode_seconds']:.2f}s "
                f"({r['decode_rows_per_second']:,.0f}/s), Target.apply "
                f"{r['target_apply_seconds']:.2f}s ({r['target_apply_rows_per_second']:,.0f}/s)"
            )
        if r["profile"]:
            out.print(f"{r['target']} profile: {r['profile']}")
        if r["peer"] is not None:
            p = r["peer"]
            out.print(
                f"{r['target']} beside Debezium's JDBC sink (the same events, batch.size "
                f"{p['batch_size']}): sink apply {p['apply_seconds']:.2f}s = "
                f"{p['apply_rows_per_second']:,.0f} rows/s, end to end {p['seconds']:.2f}s = "
                f"{p['rows_per_second']:,.0f} rows/s; queuestream/Debezium apply ratio "
                f"{r['peer_ratio']:.2f}"
            )
    out.print(environment_line(report["environment"], "Kafka options"))
    out.print(f"peak RSS of the benchmark process: {report['peak_rss_mb']:,.0f} MB")
    goal = report["goal_rows_per_second"]
    for r in report["runs"]:
        verdict = "meets" if r["apply_rows_per_second"] >= goal else "below"
        out.print(
            f"goal ≥ {goal:,} rows/s for {r['target']}: {verdict} "
            f"(apply {r['apply_rows_per_second']:,.0f}, end to end {r['rows_per_second']:,.0f})"
        )


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
