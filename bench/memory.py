#!/usr/bin/env python
"""Memory at scale: ONE refresh of ``--rows`` changed rows, published and applied.

Issue 10's memory goal: the producer publishing a refresh of 1,000,000 changed rows
and each consumer applying it stay under 400 MB of peak RSS. This benchmark runs
the real commands as child processes, so what it reports is what a user's process
takes:

1. the source: ``--base-rows`` rows simulated into SQLite and bulk-copied into a
   fresh PostgreSQL database (``bench.producer --generator copy``'s way), then
   replicated there with set-based ``INSERT ... SELECT`` under shifted ids
   (customers, orders, payments: every reference shifted alike) until it holds at
   least ``--rows`` changed rows, in seconds (the simulator slows down as its tables
   grow: it had not reached a million rows after six minutes on this machine);
2. ``queuestream refresh``: publishes them in one refresh (one Kafka transaction);
3. ``queuestream consume <target> --until-idle``, each target into a fresh
   PostgreSQL database, one after the other (so that they do not share the CPUs);
   with ``--instances N``, N such processes of one consumer group at once (how a
   group scales on this machine: each member owns its share of the partitions);
4. ``queuestream verify`` of each target against the source.

For each command: its peak RSS (the child's ``ru_maxrss`` from :func:`os.wait4`, the
kernel's own high-water mark, not a sample; for the producer, with its row reader
process's peak added), its seconds, events or rows per second.

    .venv/bin/python -m bench.memory                     # 1,000,000 rows
    .venv/bin/python -m bench.memory --rows 100000 --json
    .venv/bin/python -m bench.memory --instances 2     # two members per target's group

Kafka and PostgreSQL as for bench/producer.py (``make bench-memory`` starts both).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.environment import environment, environment_line
from bench.errors import BenchError, Deadline
from bench.options import add_common_arguments, check_common_arguments
from bench.output import out, print_runs
from bench.rss import FamilyPeak
from bench.scratch import STATE_DIR_VARIABLE, postgres_database, sqlite_database, writer_engine
from bench.services import resolve_postgres
from bench.session import main_with, session
from bench.source import copy_rows, count_rows, simulate
from queuestream.sync_schema import Base

__all__ = [
    "GOAL_MB",
    "main",
    "parse_args",
    "print_table",
    "replicate",
    "run",
    "run_command",
    "run_commands",
]

log = logging.getLogger("bench.memory")

#: Issue 10, goal 5: the peak RSS of the producer and of each consumer.
GOAL_MB = 400.0
_TARGETS = ("accounting", "shipping")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description="ONE refresh of N changed rows published by `queuestream refresh` and "
        "applied by `queuestream consume --until-idle` (each target into PostgreSQL): the "
        "peak RSS and seconds of each process; the targets verified against the source.",
    )
    add_common_arguments(
        p,
        each=("--targets", _TARGETS),
        rows=1_000_000,
        breakdown_help="(not used here)",
        profile_help="(not used here: run py-spy on the command instead)",
        kafka_help="librdkafka option for every command (QUEUESTREAM_KAFKA); repeatable",
    )
    p.add_argument(
        "--base-rows",
        type=int,
        default=50_000,
        help="rows simulated, then replicated up to --rows (default: %(default)s)",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=1,
        help="consumer processes per target, members of one group, run at once "
        "(default: %(default)s)",
    )
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.instances < 1:
        p.error("--instances must be at least 1")
    if args.base_rows < 1:
        p.error("--base-rows must be at least 1")
    if args.breakdown or args.profile:
        p.error("--breakdown and --profile are not measured here (profile with py-spy)")
    return args


def run_command(
    name: str, command: list[str], env: dict[str, str], log_file: Path, deadline: Deadline
) -> dict[str, Any]:
    """Run one queuestream command to its end: exit code, seconds, peak RSS (MB), stdout.

    The peak RSS is the child's ``ru_maxrss`` as :func:`os.wait4` reports it (kilobytes
    on Linux): the kernel's high-water mark of the process, so no peak falls between
    two samples. A command that starts processes of its own (the producer's row
    reader) counts theirs too: each one's VmHWM read every 0.05 s, added to the
    command's own (``helpers_peak_rss_mb`` says how much of it is theirs).
    """
    return run_commands(name, [command], env, [log_file], deadline)[0]


def run_commands(
    name: str,
    commands: list[list[str]],
    env: dict[str, str],
    log_files: list[Path],
    deadline: Deadline,
) -> list[dict[str, Any]]:
    """Run ``commands`` at once, each to its end (see :func:`run_command`).

    Each result's ``seconds`` runs from the start of all of them to that one's end.
    """
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / f"{i}.out" for i in range(len(commands))]
        started = time.perf_counter()
        running: dict[int, int] = {}
        results: list[dict[str, Any]] = [{} for _ in commands]
        popens = []
        for i, (command, log_file, output) in enumerate(
            zip(commands, log_files, outputs, strict=True)
        ):
            with log_file.open("wb") as sink, output.open("wb") as stdout:
                popen = subprocess.Popen(command, env=env, stdout=stdout, stderr=sink)
            popens.append(popen)
            running[popen.pid] = i
        families = {popen.pid: FamilyPeak(popen.pid) for popen in popens}
        while running:
            for pid_waited in list(running):
                families[pid_waited].sample()
                pid, status, usage = os.wait4(pid_waited, os.WNOHANG)
                if not pid:
                    continue
                i = running.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                popens[i].returncode = code
                if code != 0:
                    tail = " | ".join(
                        log_files[i].read_text(errors="replace").strip().splitlines()[-3:]
                    )
                    _kill(popens)
                    msg = f"{name} exited with {code}: {tail}"
                    raise BenchError(msg)
                # ru_maxrss is the largest of the command and the processes it started (a
                # producer's row reader): with those, the command's own last VmHWM
                # reading, and theirs, added up.
                helpers = families[pid].helpers_mb()
                own = families[pid].peaks.get(pid) if helpers else None
                own = usage.ru_maxrss / 1024 if own is None else own
                results[i] = {
                    "process": name,
                    "seconds": round(time.perf_counter() - started, 2),
                    "peak_rss_mb": round(own + helpers, 1),
                    "helpers_peak_rss_mb": helpers,
                    "stdout": outputs[i].read_bytes().decode(errors="replace"),
                }
            if running and deadline.left() <= 0:
                _kill(popens)
                msg = f"--timeout {deadline.seconds:g}s reached while running {name}"
                raise BenchError(msg)
            time.sleep(0.05)
    return results


def _kill(popens: list[subprocess.Popen[bytes]]) -> None:
    """Stop the commands still running (a sibling failed, or the deadline passed)."""
    for popen in popens:
        if popen.returncode is None:
            popen.kill()
            popen.wait()


#: Per table, its id columns and the id each holds: shifted alike in every copy.
_IDS = {
    "Customers": {"CustomerID": "customer", "EnrollerID": "customer"},
    "CustomerSites": {"CustomerID": "customer"},
    "CustomerAccounts": {"CustomerID": "customer"},
    "Orders": {"OrderID": "order", "CustomerID": "customer"},
    "OrderDetails": {"OrderID": "order"},
    "Payments": {"PaymentID": "payment", "CustomerID": "customer", "OrderID": "order"},
}
_ID_OF = {"customer": ("Customers", "CustomerID"), "order": ("Orders", "OrderID")}
_ID_OF["payment"] = ("Payments", "PaymentID")


def replicate(url: str, rows: int) -> dict[str, int]:
    """Copy the source's rows into itself under shifted ids until it holds ``rows``.

    Copy ``k`` adds ``k`` times (the largest id + 1) to every id of a kind, so that
    references stay within their copy and every row is new, stamped as the original.
    Returns the rows per table.
    """
    engine = writer_engine(url)
    try:
        have = count_rows(engine)
        base = sum(have.values())
        copies = -(-rows // base) if base else 1
        if copies <= 1:
            return have
        with engine.begin() as conn:
            span = {
                kind: int(conn.exec_driver_sql(f'SELECT max("{c}") + 1 FROM "{t}"').scalar_one())
                for kind, (t, c) in _ID_OF.items()
            }
            for table_name, ids in _IDS.items():
                table = Base.metadata.tables[table_name]
                columns = [c.name for c in table.columns]
                shifted = ", ".join(
                    f'"{c}" + k * {span[ids[c]]}' if c in ids else f'"{c}"' for c in columns
                )
                names = ", ".join(f'"{c}"' for c in columns)
                conn.exec_driver_sql(
                    f'INSERT INTO "{table_name}" ({names}) SELECT {shifted} '
                    f'FROM "{table_name}", generate_series(1, {copies - 1}) AS k'
                )
        return count_rows(engine)
    finally:
        engine.dispose()


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "queuestream.cli", *args]


def _environment(
    args: argparse.Namespace, source: str, bootstrap: str, prefix: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "QUEUESTREAM_SOURCE_URL": source,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "QUEUESTREAM_TOPIC_PREFIX": prefix,
        "QUEUESTREAM_PARTITIONS": str(args.partitions),
        "QUEUESTREAM_FIRST_WINDOW_HOURS": str(args.first_window_hours),
        "QUEUESTREAM_SETTLE_SECONDS": "0",
        "QUEUESTREAM_PG_CLOCK_ALLOWANCE_SECONDS": "0",
    }
    env.pop("QUEUESTREAM_SCHEMA_REGISTRY_URL", None)
    if args.kafka:
        env["QUEUESTREAM_KAFKA"] = json.dumps(args.kafka)
    return env


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        session(args) as started,
        sqlite_database() as template,
        postgres_database(resolve_postgres(args)) as source,
        tempfile.TemporaryDirectory(prefix="qs-bench-memory-") as folder,
    ):
        deadline, progress = started.deadline, started.progress
        logs = Path(folder)
        base = min(args.base_rows, args.rows)
        progress(f"simulating {base:,} rows into SQLite, copying them to PostgreSQL")
        simulated = simulate(template, "sqlite", base, args, deadline, progress)
        copied = copy_rows(template, source, "postgres", deadline)
        started_at = time.perf_counter()
        per_table = replicate(source, args.rows)
        rows = sum(per_table.values())
        progress(
            f"{rows:,} rows in PostgreSQL: {simulated.rows:,} simulated in "
            f"{simulated.seconds:.1f}s, copied in {copied.seconds:.1f}s, replicated in "
            f"{time.perf_counter() - started_at:.1f}s"
        )
        prefix = started.prefixes.new("postgres", "memory")
        env = _environment(args, source, started.bootstrap, prefix)
        env[STATE_DIR_VARIABLE] = str(logs / "state")

        deadline.check("refreshing")
        progress(f"queuestream refresh ({prefix})")
        refresh = run_command(
            "producer", _command("refresh", "--json"), env, logs / "refresh.log", deadline
        )
        published = json.loads(refresh.pop("stdout"))
        events = int(published[0]["events"]) if published else 0
        if len(published) != 1 or events != rows:
            msg = f"expected ONE refresh of {rows} events, got {published}"
            raise BenchError(msg)
        refresh.update(events=events, per_second=_rate(events, refresh["seconds"]))
        progress(
            f"producer: {events:,} events in {refresh['seconds']:.1f}s, "
            f"peak RSS {refresh['peak_rss_mb']} MB"
        )
        processes = [refresh]
        for name in args.targets:
            processes.append(_consume(name, env, logs, args, deadline, progress))
    return {
        "rows_requested": args.rows,
        "rows": rows,
        "per_table": per_table,
        "goal_peak_rss_mb": GOAL_MB,
        "processes": processes,
        "within_goal": all(p["peak_rss_mb"] < GOAL_MB for p in processes),
        "environment": environment(started.bootstrap, args),
    }


def _consume(
    name: str,
    env: dict[str, str],
    logs: Path,
    args: argparse.Namespace,
    deadline: Deadline,
    progress: Any,
) -> dict[str, Any]:
    """Apply the refresh with ``queuestream consume NAME --until-idle``, then verify it."""
    with postgres_database(resolve_postgres(args)) as target:
        deadline.check(f"consuming into {name}")
        progress(f"queuestream consume {name} --until-idle")
        env = {**env, "QUEUESTREAM_IDLE_SECONDS": "2"}
        members = run_commands(
            name,
            [_command("consume", name, "--target", target, "--until-idle")] * args.instances,
            env,
            [logs / f"{name}-{i}.log" for i in range(args.instances)],
            deadline,
        )
        printed = [m.pop("stdout") for m in members]
        done = {
            "process": name if args.instances == 1 else f"{name} x{args.instances}",
            "instances": args.instances,
            "seconds": max(m["seconds"] for m in members),
            "peak_rss_mb": max(m["peak_rss_mb"] for m in members),
        }
        checked = subprocess.run(
            _command("verify", name, "--target", target, "--json"),
            env=env,
            capture_output=True,
            text=True,
            timeout=max(deadline.left(), 1),
            check=False,
        )
    if checked.returncode not in (0, 1):
        msg = f"verify {name} failed: {checked.stderr.strip()[-500:]}"
        raise BenchError(msg)
    if checked.returncode == 1:
        msg = f"{name} differs from the source after consuming: {checked.stdout[-2000:]}"
        raise BenchError(msg)
    rows = sum(_synchronized(each) for each in printed)
    done.update(events=rows, per_second=_rate(rows, done["seconds"]), verified=True)
    progress(
        f"{name}: verified equal to the source; {done['seconds']:.1f}s, "
        f"peak RSS {done['peak_rss_mb']} MB"
    )
    return done


def _synchronized(printed: str) -> int:
    """Rows the consumer synchronized, from its closing line ("... synchronized N rows")."""
    found = re.findall(r"synchronized (\d+) rows", printed)
    if not found:
        msg = f"the consumer printed no closing line: {printed[-500:]!r}"
        raise BenchError(msg)
    return int(found[-1])


_COLUMNS = (
    ("process", "{process}"),
    ("events / rows", "{events:,}"),
    ("seconds", "{seconds:.1f}"),
    ("events/s", "{per_second:,.0f}"),
    ("peak RSS MB", "{peak_rss_mb:.1f}"),
)


def print_table(report: dict[str, Any]) -> None:
    print_runs(
        f"queuestream memory: ONE refresh of {report['rows']:,} changed rows",
        _COLUMNS,
        report["processes"],
        caption=f"peak RSS: each command's ru_maxrss (os.wait4); goal under {GOAL_MB:.0f} MB",
    )
    verdict = "within" if report["within_goal"] else "NOT within"
    out.print(f"{verdict} the goal of {GOAL_MB:.0f} MB; targets verified equal to the source")
    out.print(environment_line(report["environment"], "Kafka options"))


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
