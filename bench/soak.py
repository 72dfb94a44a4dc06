"""Soak: the whole pipeline under steady load for minutes, as an operator runs it.

The real commands, as separate processes, against the local broker and PostgreSQL:

1. ``queuestream sim`` fills a fresh PostgreSQL sync database, then keeps writing
   ``--rate`` business actions per second for ``--minutes``;
2. ``queuestream produce --interval`` publishes it to fresh topics;
3. ``queuestream consume accounting`` and ``consume shipping`` apply it to two
   fresh PostgreSQL targets.

The business deletes rows too (``sim --deletes``): lines removed from changed
orders reach the targets with their refresh, but payments, orders and customers
deleted with nothing changed behind them only through a sweep. So the producer
sweeps between refreshes (``produce --sweep-every``), and once the load has
stopped and the producer with it, a final ``queuestream sweep`` pass (started
after the load, a second one when the first only resumed a pass begun before)
publishes the last deletes before the consumers drain again and the targets are
verified.

Every ``--sample-seconds`` the run reads each process's resident memory
(``/proc/PID/status``) and scrapes its Prometheus metrics: events published and
applied, the consumers' lag, the producer's watermark age, and every error
counter. When the load stops it waits for the consumers to drain, stops the
producer with SIGTERM, runs the final sweep, waits for the consumers to drain
again, stops them (each process must exit 0), and checks both targets with
``queuestream verify``. The report (``--json``) gives per process the RSS after
warm-up, the peak, the last and the growth, the lag (peak, last), the errors,
the final sweep's findings and the verification. A run fails (exit 1) when a
process dies, a target does not verify, or a drain does not finish in time.

    make bench-soak                                    # 10 minutes, 100 actions/s
    .venv/bin/python -m bench.soak --minutes 2 --rate 50 --json

Linux only (RSS from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.commands import (
    STOP_TIMEOUT,
    add_live_arguments,
    cli_command,
    free_port,
    running,
    stderr_tail,
)
from bench.errors import BenchError
from bench.output import err
from bench.rss import rss_mb
from bench.scratch import Prefixes, delete_topics, postgres_database
from bench.services import check_kafka, resolve_bootstrap, resolve_postgres
from bench.session import main_with

__all__ = ["main", "run"]

#: The error counters each kind of process serves (0 until the first error is counted).
_ERROR_METRICS = {
    "producer": ("queuestream_refresh_errors_total",),
    "consumer": (
        "queuestream_apply_errors_total",
        "queuestream_dead_letters_total",
        "queuestream_target_outages_total",
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Producer and both consumers under steady load; RSS, lag and errors.",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (%(default)s)")
    p.add_argument("--rate", type=float, default=100.0, help="sim actions/s (%(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="produce --interval (%(default)s)")
    p.add_argument("--sweep-every", default="2m", help="produce --sweep-every (%(default)s)")
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="(%(default)s)")
    p.add_argument("--sample-seconds", type=float, default=10.0, help="(%(default)s)")
    p.add_argument("--drain-seconds", type=float, default=180.0, help="(%(default)s)")
    add_live_arguments(p)
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_seconds <= 0:
        p.error("--minutes, --rate and --sample-seconds must be positive")
    return args


def _scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics page, summed per metric name (labels dropped)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, 0.0) + float(sample.value)
    return found


@dataclass
class Process:
    """One queuestream command of the run, with what was sampled from it."""

    name: str
    popen: subprocess.Popen[bytes]
    metrics_port: int | None
    log: Path
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)
    metrics: dict[str, float] = field(default_factory=dict)  # the last scrape
    lag: list[float] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sample(self, at: float) -> None:
        rss = rss_mb(self.popen.pid)
        if rss is not None:
            self.rss.append((at, rss))
        if self.metrics_port is None:
            return
        try:
            self.metrics = _scrape(self.metrics_port)
        except OSError:
            return  # not serving yet, or busy: the next sample will do
        if "queuestream_consumer_lag_messages" in self.metrics:
            self.lag.append(self.metrics["queuestream_consumer_lag_messages"])

    def report(self, warmup: float) -> dict[str, Any]:
        settled = [mb for at, mb in self.rss if at >= warmup] or [mb for _, mb in self.rss]
        kind = "producer" if self.name == "producer" else "consumer"
        errors = {m: self.metrics.get(m, 0.0) for m in _ERROR_METRICS[kind]}
        return {
            "exit_code": self.popen.returncode,
            "rss_mb_after_warmup": round(settled[0], 1) if settled else None,
            "rss_mb_peak": round(max(mb for _, mb in self.rss), 1) if self.rss else None,
            "rss_mb_last": round(settled[-1], 1) if settled else None,
            "rss_mb_growth": round(settled[-1] - settled[0], 1) if settled else None,
            "lag_messages_peak": max(self.lag) if self.lag else None,
            "lag_messages_last": self.lag[-1] if self.lag else None,
            "errors": errors,
            "events_published": self.metrics.get("queuestream_events_published_total"),
            "events_applied": self.metrics.get("queuestream_events_applied_total"),
            "watermark_age_seconds_last": self.metrics.get("queuestream_watermark_age_seconds"),
        }


@contextmanager
def _started(
    name: str, args: list[str], env: dict[str, str], port: int | None, log: Path
) -> Iterator[Process]:
    """Run a command (:func:`bench.commands.running`: stopped on leaving)."""
    with running(args, env, log) as popen:
        yield Process(name, popen, port, log)


def _verify(name: str, env: dict[str, str], target: str) -> dict[str, Any]:
    done = subprocess.run(
        cli_command("verify", name, "--target", target, "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode not in (0, 1):
        msg = f"verify {name} failed: {done.stderr.strip()[-500:]}"
        raise BenchError(msg)
    report: dict[str, Any] = json.loads(done.stdout)
    return {"equal": done.returncode == 0, "report": report}


def _stop(processes: list[Process]) -> None:
    """SIGTERM to each, then wait for each (killed past the stop timeout)."""
    for process in processes:
        process.popen.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()


def _final_sweep(env: dict[str, str], load_stopped: datetime) -> dict[str, Any]:
    """A sweep pass that started after the load stopped (the producer stopped too: the sweep
    takes its transactional id). A first run may only resume an unfinished pass, which has
    passed the keys it swept before the load stopped: then a second, full pass follows."""
    for _ in range(2):
        done = subprocess.run(
            cli_command("sweep", "--json"),
            env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            msg = f"the final sweep failed: {done.stderr.strip()[-500:]}"
            raise BenchError(msg)
        report: dict[str, Any] = json.loads(done.stdout)
        if datetime.fromisoformat(report["started"]) >= load_stopped:
            return report
    msg = "the final sweep did not start a pass of its own after the load stopped"
    raise BenchError(msg)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    server = resolve_postgres(args)
    prefixes = Prefixes()
    prefix = prefixes.new("postgres", "soak")
    seconds = args.minutes * 60
    with ExitStack() as stack:
        if not args.keep_topics:
            stack.callback(delete_topics, bootstrap, prefixes.made)
        source = stack.enter_context(postgres_database(server))
        targets = {
            n: stack.enter_context(postgres_database(server)) for n in ("accounting", "shipping")
        }
        env = {
            **os.environ,
            "QUEUESTREAM_SOURCE_URL": source,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "QUEUESTREAM_TOPIC_PREFIX": prefix,
            "QUEUESTREAM_PARTITIONS": str(args.partitions),
        }
        seed = subprocess.run(
            cli_command("sim", "--actions", "500", "--per-transaction", "50"),
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if seed.returncode != 0:
            msg = f"sim could not create the source: {seed.stderr.strip()[-500:]}"
            raise BenchError(msg)
        actions = str(int(args.rate * seconds))
        ports = {n: free_port() for n in ("producer", "accounting", "shipping")}

        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qs-soak-")))

        def start(name: str, command: list[str], port: int | None) -> Process:
            metrics = ["--metrics-port", str(port)] if port is not None else []
            log = logs / f"{name}.log"
            return stack.enter_context(
                _started(name, cli_command(*command, *metrics), env, port, log)
            )

        processes = [
            start(
                "producer",
                ["produce", "--interval", str(args.interval), "--sweep-every", args.sweep_every],
                ports["producer"],
            ),
            *(
                start(name, ["consume", name, "--target", url], ports[name])
                for name, url in targets.items()
            ),
        ]
        sim_args = ["sim", "--actions", actions, "--rate", str(args.rate), "--seed", "7"]
        sim_args.append("--deletes")
        sim = start("sim", sim_args, None)
        started = time.monotonic()
        watched = [*processes, sim]
        while time.monotonic() - started < seconds and sim.alive():
            at = time.monotonic() - started
            for process in watched:
                process.sample(at)
            dead = [p for p in processes if not p.alive()]
            if dead:
                first = dead[0]
                msg = f"{first.name} exited with {first.popen.returncode}: {stderr_tail(first.log)}"
                raise BenchError(msg)
            if not args.json:
                lags = ", ".join(f"{p.name} lag {p.lag[-1]:.0f}" for p in processes if p.lag)
                rss = ", ".join(f"{p.name} {p.rss[-1][1]:.0f} MB" for p in processes if p.rss)
                err.print(f"{at:6.0f}s  {rss}  {lags}", highlight=False)
            time.sleep(args.sample_seconds)
        load_seconds = time.monotonic() - started
        if sim.alive():
            sim.popen.send_signal(signal.SIGTERM)
            sim.popen.wait(STOP_TIMEOUT)
        load_stopped = datetime.now(UTC)
        drained = _drain(processes, started, args)
        producer, consumers = processes[0], processes[1:]
        _stop([producer])
        swept = _final_sweep(env, load_stopped)
        drained_after_sweep = _drain(consumers, started, args)
        _stop(consumers)
        verified = {name: _verify(name, env, url) for name, url in targets.items()}
        report = {
            "minutes": round(load_seconds / 60, 2),
            "rate_actions_per_second": args.rate,
            "interval_seconds": args.interval,
            "drained_seconds": drained,
            "final_sweep": swept,
            "drained_after_sweep_seconds": drained_after_sweep,
            "processes": {p.name: p.report(args.warmup_seconds) for p in processes},
            "verified": {name: v["equal"] for name, v in verified.items()},
            "verify": {name: v["report"] for name, v in verified.items()},
        }
    failed = [n for n, p in report["processes"].items() if p["exit_code"] != 0]
    unequal = [n for n, ok in report["verified"].items() if not ok]
    if failed or unequal or drained is None or drained_after_sweep is None:
        msg = (
            f"soak failed: exits {failed or 'ok'}, unverified {unequal or 'none'}, "
            f"drained {drained}, after the final sweep {drained_after_sweep}"
        )
        print(json.dumps(report, indent=2, default=str), file=sys.stderr)
        raise BenchError(msg)
    return report


def _drain(processes: list[Process], started: float, args: argparse.Namespace) -> float | None:
    """Seconds until two samples in a row show no consumer lag after the load; None: never."""
    until = time.monotonic() + args.drain_seconds
    begun = time.monotonic()
    quiet = 0
    consumers = [p for p in processes if p.name != "producer"]
    while time.monotonic() < until:
        time.sleep(max(args.interval * 2, 2.0))
        for process in processes:
            process.sample(time.monotonic() - started)
        lagging = [p for p in consumers if not p.lag or p.lag[-1] > 0]
        quiet = 0 if lagging else quiet + 1
        if quiet >= 2:
            return round(time.monotonic() - begun, 1)
    return None


def print_table(report: dict[str, Any]) -> None:
    print(f"soak: {report['minutes']} min at {report['rate_actions_per_second']} actions/s")
    for name, p in report["processes"].items():
        print(
            f"  {name:10} exit {p['exit_code']}  RSS {p['rss_mb_after_warmup']} -> "
            f"{p['rss_mb_last']} MB (peak {p['rss_mb_peak']}, growth {p['rss_mb_growth']})  "
            f"lag peak {p['lag_messages_peak']}  errors {p['errors']}"
        )
    sweep = report["final_sweep"]["findings"]
    found = {t: {k: n for k, n in f.items() if n and k != "checked"} for t, f in sweep.items()}
    found = {t: kinds for t, kinds in found.items() if kinds}
    print(f"  drained in {report['drained_seconds']} s; final sweep found {found or 'nothing'}")
    print(
        f"  drained again in {report['drained_after_sweep_seconds']} s; "
        f"verified {report['verified']}"
    )


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
