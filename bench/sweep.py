#!/usr/bin/env python
"""The sweep at scale: a pass over N unchanged rows, the state rebuilt, seeded findings.

On a PostgreSQL source of about ``--rows`` changed rows across the six tables
(the simulator, as bench/producer.py writes them) the benchmark measures

1. **refresh**: ONE refresh publishing every row (so the published state, and its
   changelog topic, hold them all): seconds, events/s;
2. **sweep**: a full pass (``Sweeper.run_pass``, unthrottled, the default chunk)
   over the unchanged rows; it must publish nothing: no event, and the batches
   topic's end offset does not move (both asserted); seconds, rows/s;
3. **state rebuild**: the local cache file deleted, ``PublishedState.open``
   rebuilds it from the changelog topic; seconds, rows/s, the file's size;
4. **findings**: ``--seeded`` rows of each kind written into the source (order
   lines and payments deleted, customers changed without a new ModifiedDate,
   payments inserted two days back-dated), then a second pass; what it finds
   and publishes is asserted against what was seeded.

Each phase runs in a fresh process (bench/phases.py), so its peak RSS is
that phase's own and not what the phases before it left; the report also gives
the RSS the process had when the phase started (after its imports and set-up)
and the growth during the phase, the honest figure for "memory stays flat".

    .venv/bin/python -m bench.sweep                     # 1,000,000 rows
    .venv/bin/python -m bench.sweep --rows 50000 --json

Kafka and PostgreSQL as for bench/producer.py (``make bench-sweep`` starts both).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from bench.environment import environment, environment_line
from bench.errors import BenchError, Deadline
from bench.options import add_common_arguments, check_common_arguments
from bench.output import Progress, out, print_runs
from bench.phases import in_fresh_process, refresh_phase
from bench.scratch import postgres_database, writer_engine
from bench.services import bench_settings, resolve_postgres
from bench.session import main_with, session
from bench.source import simulate
from bench.sweep_phases import cache_mb, rebuild_phase, sweep_phase
from producer.published_state import state_path
from queuestream.kafka_clients import batches_topic
from queuestream.settings import Settings
from queuestream.sync_schema import Base, to_source_local

__all__ = ["main", "parse_args", "print_table", "run"]

log = logging.getLogger("bench.sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sweep",
        description="A sweep pass over N unchanged rows (publishes nothing), the published "
        "state rebuilt from its changelog, and a pass that finds seeded deletes, late rows "
        "and repairs; seconds, rows/s and peak RSS of each.",
    )
    add_common_arguments(
        p,
        each=("--backends", ("postgres",)),
        rows=1_000_000,
        breakdown_help="(not used here)",
        profile_help="(not used here: run py-spy on the command instead)",
        kafka_help="librdkafka option for every client (settings.kafka); repeatable",
    )
    p.add_argument(
        "--seeded",
        type=int,
        default=100,
        help="rows of each kind seeded for the second pass: order lines and payments "
        "deleted, customers changed without ModifiedDate, back-dated payments "
        "(default: %(default)s)",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.seeded < 1:
        p.error("--seeded must be at least 1")
    if args.breakdown or args.profile:
        p.error("--breakdown and --profile are not measured here (profile with py-spy)")
    return args


# ------------------------------------------------------------ the run's parts --


def _batches_end(settings: Settings) -> int:
    """The end offset of the batches topic (moves with every committed batch)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"bench-sweep-{uuid.uuid4().hex[:8]}",
            **settings.kafka,
        }
    )
    try:
        _low, high = consumer.get_watermark_offsets(
            TopicPartition(batches_topic(settings), 0), timeout=10
        )
    finally:
        consumer.close()
    return int(high)


def _seed(url: str, settings: Settings, watermark: datetime, n: int) -> dict[str, dict[str, int]]:
    """Write what only a sweep finds; the findings expected per table."""
    tables = Base.metadata.tables
    details, payments, customers = tables["OrderDetails"], tables["Payments"], tables["Customers"]
    horizon = to_source_local(
        watermark - timedelta(seconds=settings.overlap_seconds), settings.zone
    )
    slow_clock = to_source_local(datetime.now(UTC) - timedelta(days=2), settings.zone)
    engine = writer_engine(url)
    try:
        with engine.begin() as conn:
            lines = conn.execute(
                sa.select(details.c.OrderID, details.c.OrderLine)
                .order_by(details.c.OrderID, details.c.OrderLine)
                .limit(n)
            ).all()
            for order, line in lines:
                conn.execute(
                    details.delete().where(
                        (details.c.OrderID == order) & (details.c.OrderLine == line)
                    )
                )
            gone = conn.execute(
                sa.select(payments.c.PaymentID).order_by(payments.c.PaymentID).limit(n)
            ).scalars()
            deleted_payments = conn.execute(
                payments.delete().where(payments.c.PaymentID.in_(list(gone)))
            ).rowcount
            # Changed past the ERP: ModifiedDate untouched (stamped before the horizon).
            quiet = conn.execute(
                sa.select(customers.c.CustomerID)
                .where(customers.c.ModifiedDate < horizon)
                .order_by(customers.c.CustomerID)
                .limit(n)
            ).scalars()
            repaired = conn.execute(
                customers.update()
                .where(customers.c.CustomerID.in_(list(quiet)))
                .values(MainCity=sa.func.coalesce(customers.c.MainCity, "") + " (swept)")
            ).rowcount
            # Written by a writer whose clock is two days slow.
            first = int(conn.execute(sa.select(sa.func.max(payments.c.PaymentID))).scalar_one())
            owners = conn.execute(
                sa.select(payments.c.CustomerID, payments.c.OrderID).limit(1)
            ).one()
            late = [
                {
                    "PaymentID": first + i,
                    "CustomerID": owners[0],
                    "OrderID": owners[1],
                    "PaymentTypeID": 1,
                    "PaymentDate": slow_clock,
                    "Amount": 12.34,
                    "CurrencyCode": "USD",
                    "Memo": "slow clock",
                    "CreatedDate": slow_clock,
                    "ModifiedDate": slow_clock,
                }
                for i in range(1, n + 1)
            ]
            conn.execute(payments.insert(), late)
    finally:
        engine.dispose()
    return {
        "order_details": {"deleted": len(lines), "late": 0, "repaired": 0},
        "payments": {"deleted": deleted_payments, "late": len(late), "repaired": 0},
        "customers": {"deleted": 0, "late": 0, "repaired": repaired},
    }


def _check_seeded(found: dict[str, dict[str, int]], seeded: dict[str, dict[str, int]]) -> None:
    for table, counts in found.items():
        wanted = seeded.get(table, {})
        for kind in ("deleted", "late", "repaired"):
            if counts.get(kind, 0) != wanted.get(kind, 0):
                msg = (
                    f"the second sweep found {counts.get(kind, 0)} {kind} in {table}, "
                    f"seeded {wanted.get(kind, 0)}: {found}"
                )
                raise BenchError(msg)


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0.0


def _say(progress: Progress, what: str, phase: dict[str, Any], count: str) -> None:
    progress(
        f"{what}: {phase[count]:,} {count} in {phase['seconds']:.2f}s "
        f"({_rate(phase[count], phase['seconds']):,.0f}/s), peak RSS {phase['peak_rss_mb']} MB "
        f"(+{phase['rss_growth_mb']} MB during it)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        session(args) as started,
        postgres_database(resolve_postgres(args)) as url,
        tempfile.TemporaryDirectory(prefix="qs-bench-state-") as state_dir,
    ):
        deadline, progress = started.deadline, started.progress
        prefix = started.prefixes.new("postgres", "sweep")
        settings = bench_settings(url, started.bootstrap, prefix, args, state_dir=state_dir)
        phase = _phases(args, url, settings, deadline, progress)
        generation = simulate(url, "postgres", args.rows, args, deadline, progress)
        progress(f"{generation.rows:,} rows in PostgreSQL in {generation.seconds:.1f}s")
        refresh = phase("refreshing", refresh_phase, settings)
        _say(progress, "refresh", refresh, "events")
        if refresh["events"] != generation.rows:
            msg = f"the refresh published {refresh['events']} events for {generation.rows} rows"
            raise BenchError(msg)

        end = _batches_end(settings)
        unchanged = phase("sweeping unchanged rows", sweep_phase, settings)
        _say(progress, "sweep of unchanged rows", unchanged, "rows")
        moved = _batches_end(settings) - end
        if unchanged["events"] or moved or unchanged["rows"] != generation.rows:
            msg = (
                f"the sweep over {generation.rows} unchanged rows compared "
                f"{unchanged['rows']}, published {unchanged['events']} events and moved "
                f"the batches topic by {moved}: {unchanged['findings']}"
            )
            raise BenchError(msg)

        cache_before = cache_mb(state_path(settings))
        rebuilt = phase("rebuilding the state", rebuild_phase, settings, refresh["refresh_id"])
        _say(progress, "state rebuilt from the changelog", rebuilt, "rows")
        if rebuilt["rows"] != generation.rows:
            msg = f"the rebuilt state holds {rebuilt['rows']} rows, published {generation.rows}"
            raise BenchError(msg)

        seeded = _seed(url, settings, refresh["watermark"], args.seeded)
        findings = phase("sweeping seeded findings", sweep_phase, settings)
        _say(progress, "sweep with findings", findings, "rows")
        _check_seeded(findings["findings"], seeded)
        expected = sum(n for counts in seeded.values() for n in counts.values())
        if findings["events"] != expected:
            msg = f"the second sweep published {findings['events']} events, seeded {expected}"
            raise BenchError(msg)
    phases = [
        {"phase": "refresh", "count": refresh["events"], **refresh},
        {"phase": "sweep, unchanged", "count": unchanged["rows"], **unchanged},
        {"phase": "state rebuild", "count": rebuilt["rows"], **rebuilt},
        {"phase": "sweep, findings", "count": findings["rows"], **findings},
    ]
    for item in phases:
        item["per_second"] = _rate(item["count"], item["seconds"])
        item["seconds"] = round(item["seconds"], 3)
    return {
        "rows_requested": args.rows,
        "rows": generation.rows,
        "per_table": generation.per_table,
        "generation_seconds": round(generation.seconds, 1),
        "phases": phases,
        "cache_mb_after_refresh": cache_before,
        "seeded": seeded,
        "environment": environment(started.bootstrap, args),
    }


def _phases(
    args: argparse.Namespace, url: str, settings: Settings, deadline: Deadline, progress: Progress
) -> Callable[..., dict[str, Any]]:
    """Run one phase in a fresh process, with a progress line first."""

    def phase(doing: str, target: Callable[..., dict[str, Any]], *more: Any) -> dict[str, Any]:
        deadline.check(doing)
        progress(f"{doing} ({url.rsplit('/', 1)[-1]}, {settings.topic_prefix})")
        result: dict[str, Any] = in_fresh_process(doing, deadline, args.verbose, target, *more)
        return result

    return phase


_COLUMNS = (
    ("phase", "{phase}"),
    ("rows", "{count:,}"),
    ("events", "{events:,}"),
    ("seconds", "{seconds:.2f}"),
    ("rows/s", "{per_second:,.0f}"),
    ("peak RSS MB", "{peak_rss_mb:.1f}"),
    ("RSS growth MB", "{rss_growth_mb:.1f}"),
)


def print_table(report: dict[str, Any]) -> None:
    rows = [{"events": None, **item} for item in report["phases"]]
    print_runs(
        f"queuestream sweep over {report['rows']:,} rows in PostgreSQL",
        _COLUMNS,
        rows,
        caption="each phase in a fresh process; peak RSS: its VmHWM; growth: over the RSS "
        "it had when the phase started (after imports and set-up)",
    )
    unchanged, rebuilt, findings = report["phases"][1:]
    out.print(
        f"sweep: chunk {unchanged['chunk']}, unthrottled, {unchanged['steps']} steps; "
        f"published nothing (batches topic unmoved)"
    )
    out.print(
        f"state cache on disk: {report['cache_mb_after_refresh']} MB after the refresh, "
        f"{rebuilt['cache_mb']} MB rebuilt from the changelog"
    )
    found = "; ".join(
        f"{table}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        for table, counts in report["seeded"].items()
    )
    out.print(f"seeded and found ({findings['events']} events): {found}")
    out.print(
        f"source: {report['rows']:,} rows simulated in {report['generation_seconds']:.1f}s; "
        + environment_line(report["environment"], "Kafka options")
    )


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
