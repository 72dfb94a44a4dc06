#!/usr/bin/env python
"""Freshness: how long after a refresh starts its rows are committed in each target.

The real commands, as a user runs them, as separate processes against the local
broker and PostgreSQL (fresh databases and topics, removed again):

1. ``queuestream sim`` fills a fresh PostgreSQL sync database (``--seed-actions``);
2. ``queuestream produce --interval 1`` publishes it, and ``queuestream consume
   accounting`` and ``consume shipping`` apply it, each to a fresh PostgreSQL
   target; once both targets hold that first refresh the pipeline is warm (and when
   the local broker has run less than ``--broker-warmup-seconds``, 240, a whole run
   like this one comes first, not measured, until it has: :func:`_warm_up`);
3. ``queuestream sim --rate`` writes about ``--rate`` changed rows per second (its
   actions per second: the rate over the rows per action the seeding wrote) for
   ``--seconds`` (stopped then if it fell behind); ``--simulators N`` splits the
   load over N of them, each with its own share of the ids (``sim --id-stride N
   --id-offset I``), when one cannot keep up beside the pipeline; then the run waits until
   every refresh that started during the load is committed in each target that
   reads its tables, and stops every process with SIGTERM (each must exit 0).

What is measured, per target, over the refreshes that started during the load:

* **the start of a refresh**: the time in its refresh id, which the producer takes
  when it starts publishing (``producer/ids.py``, to the microsecond; the window's
  bound, one query, is planned just before it);
* **the commit of a row in a target**: the commit time of the transaction that
  wrote the refresh's sync-log row (``pg_xact_commit_timestamp``) when the server
  tracks commit timestamps (``track_commit_timestamp = on``), else that row's
  ``applied_at`` (``consumers/sync_log.py``), which the consumer stamps at the end
  of the same transaction, just before it commits; the report says which;
* **latency** = commit - start, the same for every row of that sync-log entry, so
  the percentiles (p50, p95, p99, max) are weighted by rows applied.

Beside them: rows and refreshes measured, the simulator's achieved rate (rows it
wrote per second; changed rows the refreshes carried per second of source time),
the peak RSS (``VmHWM``) of the producer (with its row reader process) and of each
consumer, and a breakdown of
the latency (bench/freshness_figures.py), row-weighted p50 and p99 of each part:
the refresh (start -> END built: the END marker's ``ts_ms``), END -> the apply
began (Kafka commit, fetch, waiting for the END, decoding; of which the Kafka
commit, from the time the producer logs per refresh), the apply itself (the sync
log's ``duration_ms``), and apply -> commit. Not part of the figure: the wait
before a refresh starts, the refresh cycle (reported beside it) and how far the
window's end lies behind the start (``bound_age``: the producer's clock allowance
for PostgreSQL writers). Goal (issue 10): p99 under 1.5 s.

And what shared the machine with the pipeline: the cores each part took during the
load, the machine's busy cores in each tenth of a second after a refresh started
and each part's share of them (:mod:`bench.cycle_cpu`: which steps of the cycle
leave no core to spare, and who takes the cores then), the
simulators' CPU a row written (the same work in every run, so the machine's
speed), how long the local broker had run (its JIT's first minutes), and when
PostgreSQL's autovacuum worked on the source and on each target
(:mod:`bench.autovacuum`), with the databases it was maintaining during each of the
slowest refreshes.

    make bench-freshness                                   # 10,000 rows/s for 60 s
    make bench-freshness BENCH_ARGS="--history 40"         # a target with years of history
    .venv/bin/python -m bench.freshness --seconds 15 --rate 2000 --json

``--history N`` first gives the accounting target N old invoices and N/2 old payments a
customer (:mod:`bench.target_history`): the targets start empty, and the accounting
target's balances are recomputed from each customer's whole history.

Ctrl-C or SIGTERM stops every process the run started; every wait is bounded.
Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa

from bench.autovacuum import AutovacuumWatch, overlapping
from bench.commands import add_live_arguments, cli_command, running, stderr_tail, stop
from bench.cpu import CpuSpan, child_pids, local_services
from bench.cycle_cpu import MachineTrace, busy_between, busy_by_phase, parts_by_phase
from bench.environment import broker_uptime_seconds, environment, environment_line
from bench.errors import BenchError, Deadline
from bench.freshness_figures import (
    GOAL_P99_SECONDS,
    Refresh,
    cycle_seconds,
    sim_cpu_us_per_row,
    source_seconds,
    target_figures,
)
from bench.freshness_records import read_refreshes, read_sync_log, tracks_commit_times
from bench.output import Progress, out, print_runs, progress_printer
from bench.rss import FamilyPeak
from bench.scratch import Prefixes, delete_topics, postgres_database
from bench.services import check_kafka, resolve_bootstrap, resolve_postgres
from bench.session import main_with
from bench.target_history import add_accounting_history
from consumers import TARGET_NAMES, target_named
from producer.simulator import ACTIONS

__all__ = ["main", "parse_args", "print_table", "run"]

_REGISTRY_VARIABLES = ("QUEUESTREAM_SCHEMA_REGISTRY_URL", "SCHEMA_REGISTRY_URL")
_SIM_START_UP = 5.0  # seconds
_SIMULATED = re.compile(r"simulated (\d+) actions .*; (\d+) rows written")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.freshness",
        description="produce --interval 1 and both consumers live against PostgreSQL under "
        "simulated load: p50/p95/p99 of refresh start -> commit in each target, peak RSS.",
    )
    p.add_argument(
        "--rate", type=float, default=10_000.0, help="changed rows/s to write (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="load duration (%(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="produce --interval (%(default)s)")
    p.add_argument(
        "--seed-actions", type=int, default=2000, help="sim actions before the load (%(default)s)"
    )
    p.add_argument(
        "--per-transaction",
        type=int,
        default=100,
        help="sim actions per source transaction during the load (%(default)s)",
    )
    p.add_argument(
        "--simulators",
        type=int,
        default=2,
        help="sim processes sharing the load, each its own ids (%(default)s: one fell behind "
        "at 10,000 rows/s beside the pipeline on 2 cores)",
    )
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=180.0,
        help="at most this long for the first refresh to reach both targets (%(default)s)",
    )
    p.add_argument(
        "--broker-warmup-seconds",
        type=float,
        default=240.0,
        help="when the local broker has run less than this, a warm-up run of the same load "
        "comes first, not measured, until it has (its JIT compilers' first minutes; "
        "%(default)s, 0: never)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=300.0,
        help="at most this long for the load's refreshes to reach the targets (%(default)s)",
    )
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="before the load, give every customer of the accounting target, and those the "
        "load will create, N old invoices and N/2 old payments (bench/target_history.py): a "
        "target that has run for years (%(default)s: none)",
    )
    p.add_argument(
        "--logs",
        type=Path,
        help="keep each process's log (producer, consumers, simulators) in this folder; "
        "by default they are deleted with the run",
    )
    add_live_arguments(p)
    args = p.parse_args(argv)
    positive = (args.rate, args.seconds, args.interval, args.seed_actions, args.per_transaction)
    if args.history < 0:
        p.error("--history: 0 or more")
    if min(*positive, args.simulators) <= 0:
        p.error(
            "--rate, --seconds, --interval, --seed-actions, --per-transaction, --simulators: "
            "positive"
        )
    args.kafka = {}  # environment() reports the client options: none here
    return args


# ------------------------------------------------------------ the processes --


@dataclass
class _Command:
    """One command of the run and the peak RSS last read from it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_mb: float | None = None
    family: FamilyPeak | None = None

    def sample(self) -> None:
        """The command's peak so far, with those of the processes it started (the
        producer's row reader): VmHWM only grows, so each last reading is its peak."""
        if self.family is None:
            self.family = FamilyPeak(self.popen.pid)
        self.family.sample()
        if self.family.peaks:
            self.peak_mb = self.family.total_mb()

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            msg = f"{self.name} exited with {self.popen.returncode}: {stderr_tail(self.log)}"
            raise BenchError(msg)


def _simulated(log: str) -> tuple[int, int] | None:
    """(actions, rows written) from ``queuestream sim``'s last line, when it got there."""
    found = _SIMULATED.search(log)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _seed(env: dict[str, str], actions: int) -> float:
    """Fill the source; the rows the simulator wrote per action."""
    done = subprocess.run(
        cli_command("sim", "--actions", str(actions), "--per-transaction", "100"),
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    simulated = _simulated(done.stdout)
    if done.returncode != 0 or simulated is None:
        msg = f"sim could not fill the source: {(done.stderr or done.stdout).strip()[-500:]}"
        raise BenchError(msg)
    return simulated[1] / simulated[0]


# ------------------------------------------------------------------ the run --


def _applied(
    targets: dict[str, str], expected: dict[str, set[str]], commit_times: bool
) -> dict[str, list[dict[str, Any]]] | None:
    """Each target's sync log, once it holds every refresh expected of it; else None."""
    logs = {}
    for name, url in targets.items():
        logs[name] = read_sync_log(url, name, commit_times)
        if not expected[name] <= {entry["refresh_id"] for entry in logs[name]}:
            return None
    return logs


def _wait(
    what: str, seconds: float, deadline: Deadline, commands: list[_Command]
) -> Iterator[float]:
    """Poll once a second for ``seconds`` at most (and the deadline); the processes sampled."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        deadline.check(what)
        for command in commands:
            command.sample()
            command.check_alive()
        yield end - time.monotonic()
        time.sleep(1.0)
    # What each process said last: where the run stands (a refresh that never ends, a
    # consumer that never joined) without rerunning it to find out.
    said = "; ".join(f"{c.name}: {stderr_tail(c.log) or '(nothing)'}" for c in commands)
    msg = f"{what}: not done after {seconds:g}s; the processes' last lines: {said}"
    raise BenchError(msg)


def _cpu_parts(bootstrap: str, server: str, pipeline: list[_Command]) -> dict[str, int]:
    """The processes whose CPU the load's span is read from: the pipeline's commands
    (the producer's row reader apart), the broker and PostgreSQL when they are local."""
    url = sa.make_url(server)
    parts = local_services(
        {"broker": bootstrap.split(",")[0], "postgres": f"{url.host}:{url.port or 5432}"}
    )
    for command in pipeline:
        parts[command.name] = command.popen.pid
        if command.name == "producer":
            for child in child_pids(command.popen.pid):
                parts["row_reader"] = child
    return parts


def _by_part(busy: dict[str, float], sims: list[str]) -> dict[str, float]:
    """:meth:`CpuSpan.stop`'s figures (or a phase's of the trace) with the simulators
    added up and the producer's own process told apart from its row reader (read with
    it, as its child)."""
    found = dict(busy)
    found["simulators"] = round(sum(found.pop(name, 0.0) for name in sims), 3)
    if "row_reader" in found and "producer" in found:
        found["producer"] = round(found["producer"] - found["row_reader"], 3)
    return found


def _cores_during(
    trace: MachineTrace, begin: float, end: float, sims: list[_Command]
) -> dict[str, float]:
    """The cores each part took from ``begin`` to ``end`` (a slow refresh's span), the
    machine's, and ``other``: what no part took (processes outside the run's)."""
    during = {}
    for name, samples in trace.parts.items():
        cores = busy_between(samples, begin, end)
        if cores is not None:
            during[name] = cores
    found = _by_part(during, [s.name for s in sims])
    parts = sum(found.values())
    machine = busy_between(trace.samples, begin, end)
    if machine is not None:
        found["machine"] = machine
        found["other"] = round(machine - parts, 2)
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The measured run, after a warm-up run when the local broker has just started."""
    progress = progress_printer(args.json)
    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    warmup = _warm_up(args, bootstrap, progress)
    return {**_measure(args, bootstrap, progress), "broker_warmup": warmup}


#: The least load of a warm-up run, when one is made.
_WARMUP_LOAD_SECONDS = 30.0


def _warm_up(args: argparse.Namespace, bootstrap: str, progress: Progress) -> dict[str, Any] | None:
    """When the local broker has run less than ``--broker-warmup-seconds``, one run of the
    same pipeline and load, not measured, for long enough that it has; what it was.

    The broker is a JVM with its JIT compilers on: over its first minutes under this
    load they take a share of a core that a broker up for days no longer pays. Three
    runs one after the other on a broker just started, at the same machine speed
    (26.4-27.2 µs of simulator CPU a row), found the broker at 0.22, 0.15 and 0.09 of a
    core during the load (up 11, 82 and 155 s when it began) and the accounting p99 at
    2.00, 1.75 and 1.27 s. Synthetic traffic of the same volume (transactions of plain
    messages, and as many to a compacted topic) until it had run 180 s left it at
    0.12-0.15 in the two runs after it; a warm-up run of the pipeline until then, at
    0.11 in the run after it and 0.07 in the next (up 262 s): only the pipeline's own
    traffic warms it, over about four minutes. A broker of unknown age (not this
    checkout's) is left as it is.
    """
    uptime = broker_uptime_seconds(bootstrap)
    if uptime is None or uptime >= args.broker_warmup_seconds:
        return None
    load = max(args.broker_warmup_seconds - uptime, _WARMUP_LOAD_SECONDS)
    progress(
        f"the local broker started {uptime:.0f}s ago: a warm-up run first, with {load:.0f}s "
        "of the same load, not measured (its JIT compilers' first minutes are the broker's "
        "start, not the pipeline's freshness; --broker-warmup-seconds 0: no warm-up)"
    )
    started = time.monotonic()
    warm = argparse.Namespace(**{**vars(args), "seconds": load, "history": 0, "logs": None})
    report = _measure(warm, bootstrap, progress)
    accounting = report["targets"]["accounting"]["latency_seconds"] or {}
    return {
        "broker_uptime_before_seconds": uptime,
        "load_seconds": report["load_seconds"],
        "seconds": round(time.monotonic() - started, 1),
        "accounting_p99_seconds_not_counted": accounting.get("p99"),
    }


def _measure(args: argparse.Namespace, bootstrap: str, progress: Progress) -> dict[str, Any]:
    server = resolve_postgres(args)
    # The bound of the whole run: every wait below has its own bound within it.
    deadline = Deadline(args.warmup_seconds + args.seconds * 3 + args.drain_seconds + 4 * 60 + 600)
    prefixes = Prefixes()
    prefix = prefixes.new("postgres", "fresh")
    with ExitStack() as stack:
        if not args.keep_topics:
            stack.callback(delete_topics, bootstrap, prefixes.made)
        source = stack.enter_context(postgres_database(server))
        targets = {n: stack.enter_context(postgres_database(server)) for n in TARGET_NAMES}
        commit_times = tracks_commit_times(source)
        env = {
            # single-object encoding, as the markers are decoded here
            **{k: v for k, v in os.environ.items() if k not in _REGISTRY_VARIABLES},
            "QUEUESTREAM_SOURCE_URL": source,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "QUEUESTREAM_TOPIC_PREFIX": prefix,
            "QUEUESTREAM_PARTITIONS": str(args.partitions),
        }
        progress(f"seeding the source with {args.seed_actions:,} actions")
        per_action = _seed(env, args.seed_actions)
        if args.logs is None:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qs-freshness-")))
        else:
            logs = args.logs
            logs.mkdir(parents=True, exist_ok=True)

        def start(name: str, command: list[str]) -> _Command:
            log = logs / f"{name}.log"
            return _Command(
                name, stack.enter_context(running(cli_command(*command), env, log)), log
            )

        producer = start("producer", ["produce", "--interval", f"{args.interval:g}"])
        consumers = [start(n, ["consume", n, "--target", url]) for n, url in targets.items()]
        pipeline = [producer, *consumers]
        progress("waiting for the seed's refresh to reach both targets")
        for _ in _wait("warming up", args.warmup_seconds, deadline, pipeline):
            if all(read_sync_log(url, n, False) for n, url in targets.items()):
                break

        actions_per_second = args.rate / per_action
        actions = int(actions_per_second * args.seconds) + 1
        history = None
        if args.history:
            # and the customers the load will create (a fifth more than it should)
            created = int(actions * ACTIONS["new_customer"] / sum(ACTIONS.values()) * 1.2)
            progress(
                f"giving each customer of the accounting target, and the {created:,} the "
                f"load will create, {args.history} old invoices and {args.history // 2} old "
                "payments"
            )
            history = add_accounting_history(
                targets["accounting"], args.history, args.history // 2, created
            ).as_dict()
            progress(
                f"the accounting target holds {history['invoices']:,} invoices and "
                f"{history['payments']:,} payments ({history['seconds']}s)"
            )
        progress(
            f"load: {args.rate:,.0f} rows/s = {actions_per_second:,.0f} actions/s "
            f"({per_action:.2f} rows per action) for {args.seconds:g}s"
        )
        broker_uptime = broker_uptime_seconds(bootstrap)
        watch = AutovacuumWatch({"source": source, **targets})
        watch.start()
        stack.callback(watch.halt)
        load_started = datetime.now(UTC)
        clock = time.monotonic()
        parts = _cpu_parts(bootstrap, server, pipeline)
        cpu = CpuSpan()
        cpu.start(parts)
        trace = MachineTrace()
        for name, pid in parts.items():
            trace.add(name, pid)
        trace.start()
        stack.callback(trace.stop)
        n = args.simulators
        sims = []
        for i in range(n):
            sim_args = [
                "sim", "--actions", str(actions // n + 1),
                "--rate", f"{actions_per_second / n:.3f}",
                "--per-transaction", str(args.per_transaction), "--seed", str(7 + i),
                "--id-stride", str(n), "--id-offset", str(i),
            ]  # fmt: skip
            sims.append(start(f"sim{i}", sim_args))
        simulators = {s.name: s.popen.pid for s in sims}
        parts.update(simulators)
        for name, pid in simulators.items():
            trace.add(name, pid)
        # The simulator's start-up (imports, connecting) is no load: it gets that long
        # again to finish its actions; past it, it fell behind and the load ends anyway.
        until = clock + args.seconds + _SIM_START_UP
        while any(s.popen.poll() is None for s in sims) and time.monotonic() < until:
            deadline.check("loading")
            for command in pipeline:
                command.sample()
                command.check_alive()
            cpu.sample(simulators)  # they end before the span does; the rest live on
            time.sleep(0.25)
        cores_busy = _by_part(cpu.stop(parts), [s.name for s in sims])
        traced = trace.stop()
        for sim in sims:
            stop(sim.popen)
        load_seconds = time.monotonic() - clock
        load_stopped = datetime.now(UTC)
        each = [_simulated(s.log.read_text(errors="replace")) for s in sims]
        simulated = (
            (sum(e[0] for e in each if e), sum(e[1] for e in each if e)) if all(each) else None
        )
        progress(
            f"load ran {load_seconds:.1f}s"
            + (f", {simulated[1]:,} rows written" if simulated else " (it fell behind: stopped)")
        )

        progress("waiting for the load's refreshes to reach both targets")
        measured: dict[str, Refresh] = {}
        applied = None
        for left in _wait("draining", args.drain_seconds, deadline, pipeline):
            refreshes = read_refreshes(bootstrap, prefix, deadline, producer.log)
            measured = {
                rid: r
                for rid, r in refreshes.items()
                if load_started <= r.started <= load_stopped and r.mode != "sweep"
            }
            expected = {
                name: {rid for rid, r in measured.items() if r.carries(target_named(name).tables)}
                for name in targets
            }
            applied = _applied(targets, expected, commit_times)
            if applied is not None:
                break
            progress(f"  {len(measured)} refreshes of the load; {left:.0f}s left to drain")
        assert applied is not None  # _wait raises when the drain does not finish
        maintenance = watch.stop(origin=load_started.timestamp())
        maintained = watch.spans()
        for command in pipeline:
            command.sample()
        for command in pipeline:
            stop(command.popen)
        failed = {c.name: c.popen.returncode for c in pipeline if c.popen.returncode != 0}
        if failed:
            msg = f"exit codes other than 0 after SIGTERM: {failed}"
            raise BenchError(msg)
    per_target = {
        name: {
            **target_figures(measured, applied[name], commit_times),
            "peak_rss_mb": command.peak_mb,
        }
        for name, command in zip(targets, consumers, strict=True)
    }
    for figures in per_target.values():
        for entry in figures["slowest"]:
            began = measured[entry["refresh_id"]].started.timestamp()
            entry["autovacuum"] = overlapping(maintained, began, began + entry["latency"])
            entry["cores_busy"] = _cores_during(trace, began, began + entry["latency"], sims)
    carried = sum(r.events for r in measured.values())
    starts = sorted(r.started.timestamp() for r in measured.values())
    source_span = source_seconds(list(measured.values()))
    return {
        "rate_requested_rows_per_second": args.rate,
        "seconds_requested": args.seconds,
        "load_seconds": round(load_seconds, 1),
        "interval_seconds": args.interval,
        "rows_per_action": round(per_action, 3),
        "simulators": args.simulators,
        "accounting_history": history,
        "sim_kept_up": simulated is not None,
        "sim_rows_written": simulated[1] if simulated else None,
        "sim_rows_per_second": round(simulated[1] / load_seconds, 1) if simulated else None,
        "sim_cpu_us_per_row": sim_cpu_us_per_row(
            cores_busy.get("simulators", 0.0), simulated[1] / load_seconds if simulated else None
        ),
        "refreshes_measured": len(measured),
        "refresh_cycle_p50_seconds": cycle_seconds(measured.values()),
        "events_measured": carried,
        "changed_rows_per_second": round(carried / source_span, 1) if source_span else None,
        "commit_time": "pg_xact_commit_timestamp" if commit_times else "sync_log.applied_at",
        "targets": per_target,
        "producer_peak_rss_mb": producer.peak_mb,
        "cores_busy_during_load": cores_busy,
        "cores_busy_by_refresh_phase": busy_by_phase(traced, starts, args.interval),
        "cores_busy_by_refresh_phase_and_part": {
            phase: _by_part(busy, [s.name for s in sims])
            for phase, busy in parts_by_phase(trace.parts, starts, args.interval).items()
        },
        "autovacuum_during_run": maintenance,
        "broker_uptime_at_load_seconds": broker_uptime,
        "goal_p99_seconds": GOAL_P99_SECONDS,
        "environment": environment(bootstrap, args),
    }


# ------------------------------------------------------------------- output --

_COLUMNS = (
    ("target", "{target}"),
    ("refreshes", "{refreshes:,}"),
    ("rows", "{rows:,}"),
    ("p50 s", "{p50:.3f}"),
    ("p95 s", "{p95:.3f}"),
    ("p99 s", "{p99:.3f}"),
    ("max s", "{max:.3f}"),
    ("peak RSS MB", "{peak_rss_mb:.1f}"),
)


def print_table(report: dict[str, Any]) -> None:
    rows = []
    for name, figures in report["targets"].items():
        latency = figures["latency_seconds"] or {"p50": None, "p95": None, "p99": None}
        rows.append({"target": name, "max": None, **figures, **latency})
    print_runs(
        f"queuestream freshness: refresh start -> commit in the target, "
        f"{report['load_seconds']:.0f}s of load",
        _COLUMNS,
        rows,
        caption=f"row-weighted over the refreshes started during the load; commit time: "
        f"{report['commit_time']}; peak RSS: VmHWM of the consume process",
    )
    sim = (
        f"{report['sim_rows_per_second']:,.0f} rows/s written by {report['simulators']} sim"
        if report["sim_rows_per_second"] is not None
        else "a simulator fell behind (stopped at the end of the load)"
    )
    changed = report["changed_rows_per_second"]
    out.print(
        f"load: {report['rate_requested_rows_per_second']:,.0f} rows/s asked, {sim}; "
        f"the refreshes carried {report['events_measured']:,} events in "
        f"{report['refreshes_measured']} refreshes"
        + (f" ({changed:,.0f} changed rows per second of source time)" if changed else "")
    )
    history = report.get("accounting_history")
    if history:
        out.print(
            f"accounting target given a history before the load: "
            f"{history['invoices_per_customer']} invoices and "
            f"{history['payments_per_customer']} payments a customer, "
            f"{history['invoices']:,} invoices and {history['payments']:,} payments in all"
        )
    cycle = report["refresh_cycle_p50_seconds"]
    out.print(
        f"producer (produce --interval {report['interval_seconds']:g}): peak RSS "
        f"{report['producer_peak_rss_mb']} MB"
        + (f"; a refresh started every {cycle:.2f}s (median)" if cycle else "")
    )
    busy = report["cores_busy_during_load"]
    out.print(
        f"cores busy during the load, of {os.cpu_count()}: "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in busy.items())
    )
    phases = report.get("cores_busy_by_refresh_phase") or {}
    if phases:
        out.print(
            "the machine's busy cores by seconds after a refresh started: "
            + ", ".join(f"{phase} {cores:.2f}" for phase, cores in phases.items())
        )
    by_part = report.get("cores_busy_by_refresh_phase_and_part") or {}
    if by_part:
        out.print("the cores each part took in each tenth of a second after a refresh started:")
        for phase, busy in by_part.items():
            out.print(
                f"  {phase}: "
                + ", ".join(f"{name} {cores:.2f}" for name, cores in busy.items() if cores)
            )
    if report.get("sim_cpu_us_per_row") is not None:
        out.print(
            f"the simulators took {report['sim_cpu_us_per_row']:.1f} µs of CPU a row written "
            "(the same work in every run: more means a slower machine)"
        )
    maintained = report.get("autovacuum_during_run") or {}
    if maintained:
        out.print(
            "autovacuum during the load and the drain: "
            + ", ".join(
                f"{db} {m['vacuums']} vacuums and {m['analyzes']} analyzes "
                f"(seen running {m['seconds_seen']:.1f}s)"
                for db, m in maintained.items()
            )
        )
    uptime = report.get("broker_uptime_at_load_seconds")
    if uptime is not None:
        out.print(f"the local broker had run {uptime:,.0f}s when the load started")
    warmed = report.get("broker_warmup")
    if warmed:
        out.print(
            f"(after a warm-up run with {warmed['load_seconds']:.0f}s of load, from an uptime "
            f"of {warmed['broker_uptime_before_seconds']:.0f}s; its accounting p99, not "
            f"counted: {warmed['accounting_p99_seconds_not_counted']} s)"
        )
    for name, figures in report["targets"].items():
        parts = figures["breakdown_p50_seconds"]
        if parts:
            out.print(
                f"{name}, median of each part: "
                + ", ".join(f"{part} {s:.3f}s" for part, s in parts.items() if s is not None)
            )
    for name, figures in report["targets"].items():
        if figures["slowest"]:
            worst = figures["slowest"][0]
            out.print(
                f"{name}, slowest refresh: {worst['latency']:.3f}s ({worst['rows']:,} rows; "
                f"refresh {worst['refresh']:.3f}s, end_to_apply {worst['end_to_apply']:.3f}s, "
                f"apply {worst['apply']:.3f}s)"
                + (
                    f"; autovacuum meanwhile in {', '.join(worst['autovacuum'])}"
                    if worst.get("autovacuum")
                    else ""
                )
                + (
                    "; cores meanwhile: "
                    + ", ".join(f"{part} {n:.2f}" for part, n in worst["cores_busy"].items())
                    if worst.get("cores_busy")
                    else ""
                )
            )
    out.print(environment_line(report["environment"], "Kafka options"))
    for name, figures in report["targets"].items():
        p99 = (figures["latency_seconds"] or {}).get("p99")
        if p99 is not None:
            verdict = "meets" if p99 < report["goal_p99_seconds"] else "misses"
            out.print(
                f"goal p99 < {report['goal_p99_seconds']:g} s into {name}: {verdict} ({p99:.3f} s)"
            )


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT end the run as a BenchError, so that every process is stopped;
    a second signal while stopping them is ignored (the stops are bounded)."""

    def stopped(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        msg = f"stopped by {signal.Signals(signum).name}"
        raise BenchError(msg)

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    return main_with(args, run, print_table)


if __name__ == "__main__":
    sys.exit(main())
