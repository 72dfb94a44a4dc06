"""What the benchmarks in bench/ share: options, services, fresh databases and topics, output.

bench/ is not a package: each script puts this folder first on ``sys.path`` and
imports ``common``. Everything here is about running a measurement (where Kafka
and PostgreSQL are, fresh databases and topic prefixes that are removed again,
a source filled by the Simulator, one timed refresh, reading committed messages
back, a profile, the environment a figure was taken in), nothing about what a
particular benchmark measures.

Kafka: ``--bootstrap-servers``, else ``KAFKA_BOOTSTRAP_SERVERS``, else
``scripts/kafka-local.sh bootstrap``. PostgreSQL: ``--postgres-url`` (a server's
maintenance database), else ``scripts/postgres-local.sh url``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import libversion as librdkafka_version
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from producer.refresh import Refresher, RefreshResult
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.kafka_clients import admin_client, ensure_topics
from queuestream.settings import Settings, load_settings
from queuestream.sync_schema import Base
from queuestream.tables import BATCHES, TABLES, topic_for

__all__ = [
    "REPO_ROOT",
    "SOURCE_TABLES",
    "BenchError",
    "Deadline",
    "Generation",
    "Prefixes",
    "Progress",
    "Record",
    "Session",
    "add_common_arguments",
    "bench_settings",
    "check_common_arguments",
    "check_kafka",
    "count_rows",
    "delete_topics",
    "environment",
    "environment_line",
    "err",
    "main_with",
    "new_refresher",
    "out",
    "postgres_database",
    "print_runs",
    "profiled",
    "progress_printer",
    "read_committed",
    "ready_topics",
    "resolve_bootstrap",
    "resolve_postgres",
    "session",
    "simulate",
    "sqlite_database",
    "timed_refresh",
    "writer_engine",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_TABLES = [spec.source for spec in TABLES]

log = logging.getLogger("bench")
out = Console()
err = Console(stderr=True)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# ----------------------------------------------------------------- options --


def add_common_arguments(
    p: argparse.ArgumentParser,
    *,
    rows: int,
    each: tuple[str, tuple[str, ...]],
    kafka_help: str,
    breakdown_help: str,
    profile_help: str,
) -> None:
    """The options every benchmark takes: services, the simulated rows, topics, output.

    ``each``: the option naming what is measured, one after the other, and its
    choices, e.g. ``("--backends", ("postgres", "sqlite"))``; all by default.
    """
    option, names = each
    p.add_argument(
        option,
        default=",".join(names),
        help=f"comma-separated, of {', '.join(names)} (default: %(default)s)",
    )
    p.set_defaults(_each=each)
    p.add_argument(
        "--rows",
        type=int,
        default=rows,
        help="changed rows to create per source (default: %(default)s)",
    )
    p.add_argument(
        "--postgres-url",
        help="SQLAlchemy URL of a PostgreSQL server (default: scripts/postgres-local.sh url)",
    )
    p.add_argument(
        "--bootstrap-servers",
        help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS, else scripts/kafka-local.sh bootstrap)",
    )
    p.add_argument(
        "--per-transaction",
        type=int,
        default=500,
        help="simulator actions per source transaction (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default: %(default)s)")
    p.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions per change topic (default: %(default)s)",
    )
    p.add_argument(
        "--first-window-hours",
        type=float,
        default=24.0 * 7,
        help="the refresh's first window; must cover the generated rows (default: %(default)s)",
    )
    p.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE", help=kafka_help)
    p.add_argument("--breakdown", action="store_true", help=breakdown_help)
    p.add_argument("--profile", type=Path, metavar="DIR", help=profile_help)
    p.add_argument("--keep-topics", action="store_true", help="do not delete the topics made")
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up after this many seconds in all (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    p.add_argument("-v", "--verbose", action="store_true", help="log queuestream at INFO")


def check_common_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate what :func:`add_common_arguments` added.

    The ``each`` option becomes a list, ``--kafka`` a dict.
    """
    option, names = args._each
    dest = option.removeprefix("--").replace("-", "_")
    chosen = [item.strip() for item in getattr(args, dest).split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        p.error(f"{option}: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(names)}")
    setattr(args, dest, chosen)
    del args._each
    if args.rows < 1:
        p.error("--rows must be at least 1")
    try:
        args.kafka = dict(item.split("=", 1) for item in args.kafka)
    except ValueError:
        p.error("--kafka takes KEY=VALUE")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, doing: str) -> None:
        if self.left() <= 0:
            msg = f"--timeout {self.seconds:g}s reached while {doing}"
            raise BenchError(msg)


def _script(args: list[str]) -> str:
    proc = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        msg = f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
        raise BenchError(msg)
    return proc.stdout.strip().splitlines()[-1]


def resolve_bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap_servers:
        return str(args.bootstrap_servers)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return _script([str(REPO_ROOT / "scripts" / "kafka-local.sh"), "bootstrap"])


def resolve_postgres(args: argparse.Namespace) -> str:
    if args.postgres_url:
        return str(args.postgres_url)
    return _script([str(REPO_ROOT / "scripts" / "postgres-local.sh"), "url"])


def bench_settings(
    source_url: str, bootstrap: str, prefix: str, args: argparse.Namespace, **more: Any
) -> Settings:
    return load_settings(
        source_url=source_url,
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        partitions=args.partitions,
        settle_seconds=0,
        pg_clock_allowance_seconds=0,
        first_window_hours=args.first_window_hours,
        schema_registry_url=None,
        kafka=dict(args.kafka),
        **more,
    )


class Prefixes:
    """Fresh topic prefixes (so every refresh writes to new topics), remembered for cleanup."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def new(self, backend: str, what: str) -> str:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-{backend}-{what}"
        self.made.append(prefix)
        return prefix


Progress = Callable[[str], None]  # a progress line's sink


def progress_printer(quiet: bool) -> Progress:
    """Progress lines on stderr (none with ``quiet``: JSON mode keeps stderr for errors)."""

    def progress(text: str) -> None:
        if not quiet:
            err.print(f"[dim]{text}[/]", highlight=False)

    return progress


@dataclass
class Session:
    """What one benchmark run carries: its deadline, progress lines, Kafka and topic prefixes."""

    deadline: Deadline
    progress: Progress
    bootstrap: str
    prefixes: Prefixes


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[Session]:
    """Start a run (Kafka must answer); at the end delete its topics unless --keep-topics."""
    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    started = Session(Deadline(args.timeout), progress_printer(args.json), bootstrap, Prefixes())
    try:
        yield started
    finally:
        if not args.keep_topics:
            # every Refresher creates its topics (a benchmark's other passes too)
            delete_topics(bootstrap, started.prefixes.made)


# ---------------------------------------------------------------- databases --


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, empty database on the server; dropped afterwards."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"qs_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        msg = (
            f"PostgreSQL at {make_url(server_url).render_as_string(hide_password=True)} is "
            f"unreachable ({reason}): start it (make pg-up) or pass --postgres-url"
        )
        raise BenchError(msg) from None
    try:
        url = make_url(server_url).set(database=name)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qs-bench-") as folder:
        yield f"sqlite:///{folder}/source.db"


def writer_engine(url: str) -> sa.Engine:
    try:
        return create_engine(url, writer=True)
    except TypeError:  # a queuestream without writer engines
        return create_engine(url)


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


# ------------------------------------------------------------------- Kafka --

_NOT_READY = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}


def ready_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the prefix's topics and wait until every partition answers ListOffsets.

    A partition the controller just created is not served at once: for a few tens
    of milliseconds its broker answers NOT_LEADER_FOR_PARTITION (which librdkafka
    does not flag as retriable). ``Refresher()`` waits for that itself since
    5997bfd (before, it failed on a new topic prefix); waiting here keeps leader
    elections out of the timings.
    """
    ensure_topics(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"bench-ready-{uuid.uuid4().hex}",
        }
    )
    topics = [topic_for(settings.topic_prefix, t.name) for t in TABLES]
    wanted = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
    wanted.append(TopicPartition(topic_for(settings.topic_prefix, BATCHES), 0))
    end = time.monotonic() + timeout
    try:
        for tp in wanted:
            while True:
                try:
                    consumer.get_watermark_offsets(tp, timeout=5)
                    break
                except KafkaException as exc:
                    if exc.args[0].code() not in _NOT_READY or time.monotonic() > end:
                        raise
                    time.sleep(0.02)
    finally:
        consumer.close()


def new_refresher(settings: Settings) -> Refresher:
    ready_topics(settings)
    return Refresher(settings)


def timed_refresh(settings: Settings) -> tuple[RefreshResult, float]:
    """One refresh by a new Refresher; seconds from refresh() until the commit returned."""
    refresher = new_refresher(settings)  # topics, init_transactions, progress: not timed
    try:
        started = time.perf_counter()
        results = refresher.refresh()
        seconds = time.perf_counter() - started
    finally:
        refresher.close()
    if len(results) != 1:
        msg = f"expected one refresh result, got {len(results)}"
        raise BenchError(msg)
    return results[0], seconds


Record = tuple[int, int, bytes | None, bytes | None]  # (offset, timestamp ms, key, value)


def read_committed(
    bootstrap: str, topics: list[str], deadline: Deadline
) -> dict[tuple[str, int], list[Record]]:
    """Every committed message of ``topics``, per (topic, partition), in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-readback-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=15)
        assignment = []
        for topic in topics:
            if topic not in metadata.topics:
                msg = f"topic {topic} not found when reading back"
                raise BenchError(msg)
            for partition in metadata.topics[topic].partitions:
                assignment.append(TopicPartition(topic, partition, 0))
        consumer.assign(assignment)
        pending = {(tp.topic, tp.partition) for tp in assignment}
        found: dict[tuple[str, int], list[Record]] = {k: [] for k in pending}
        at_eof: set[tuple[str, int]] = set()
        while pending:
            deadline.check(f"reading back {topics[0]} and {len(topics) - 1} more topics")
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                error = message.error()
                topic, partition = str(message.topic()), int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_eof.add((topic, partition))
                        continue
                    msg = f"reading back {topic}[{partition}]: {error.str()}"
                    raise BenchError(msg)
                at_eof.discard((topic, partition))
                found[(topic, partition)].append(
                    (
                        int(message.offset() or 0),
                        message.timestamp()[1],
                        message.key(),
                        message.value(),
                    )
                )
            pending -= _read_to_end(consumer, at_eof)
            at_eof &= pending
    finally:
        consumer.close()
    return found


def _read_to_end(consumer: Consumer, at_eof: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The partitions of ``at_eof`` whose every committed message has been read.

    read_committed stops at the last stable offset, which trails the end until the
    transaction's commit markers are written, a moment after commit_transaction()
    returned: an end-of-partition there is not the end yet. The high watermark is
    the one the last fetch brought (cached): asking the broker would wait behind the
    consumer's long-polling fetch on the same connection.
    """
    done = set()
    for topic, partition in at_eof:
        tp = TopicPartition(topic, partition)
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        (position,) = consumer.position([tp])
        if position.offset >= high:
            done.add((topic, partition))
    return done


def delete_topics(bootstrap: str, prefixes: list[str]) -> None:
    if not prefixes:
        return
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    admin = admin_client(settings)
    topics = [topic_for(p, s) for p in prefixes for s in [t.name for t in TABLES] + [BATCHES]]
    try:
        existing = set(admin.list_topics(timeout=15).topics)
        doomed = [t for t in topics if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result()
    except KafkaException as exc:
        log.warning("could not delete the benchmark topics: %s", exc)


def check_kafka(bootstrap: str) -> None:
    admin = admin_client(load_settings(kafka_bootstrap_servers=bootstrap))
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as exc:
        msg = f"Kafka at {bootstrap} is unreachable ({exc}): start it (make kafka-up)"
        raise BenchError(msg) from None
    if not metadata.brokers:
        msg = f"Kafka at {bootstrap} reports no brokers"
        raise BenchError(msg)


# ------------------------------------------------------------- the report --


def broker_jvm_flags(bootstrap: str) -> str | None:
    """The broker's JVM flags, when it runs from scripts/kafka-local.sh in this checkout."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        return None
    pid_file = REPO_ROOT / "var" / "kafka" / port / "kafka.pid"
    try:
        cmdline = Path(f"/proc/{pid_file.read_text().strip()}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    flags = [a.decode() for a in cmdline if a.startswith((b"-XX:", b"-Xm"))]
    return " ".join(flags)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def git_describe() -> str | None:
    """The commit measured, with "+dirty" when the work tree has changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head.strip() + ("+dirty" if dirty.strip() else "")


def environment(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where a figure was measured: machine, versions, broker, options."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "librdkafka": librdkafka_version()[0],
        "bootstrap_servers": bootstrap,
        "broker_jvm_flags": broker_jvm_flags(bootstrap),
        "partitions": args.partitions,
        "kafka_options": args.kafka,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "git": git_describe(),
    }


def environment_line(env: dict[str, Any], kafka_label: str) -> str:
    """:func:`environment` as one line for the readable output."""
    return (
        f"{env['cpus']} CPUs (load {env['load_average'][0]:.2f}), Python {env['python']}, "
        f"librdkafka {env['librdkafka']}, {env['partitions']} partitions, "
        f"queuestream {env['git']}, broker {env['bootstrap_servers']}"
        + (f" ({env['broker_jvm_flags']})" if env["broker_jvm_flags"] else "")
        + (f", {kafka_label} {env['kafka_options']}" if env["kafka_options"] else "")
    )


def profiled(call: Callable[[], object], folder: Path, name: str) -> str:
    """Run ``call`` under pyinstrument (cProfile when it is not installed); the report's path.

    cProfile writes ``<name>.cprofile.txt`` (top 40 by own and by cumulative time)
    and ``<name>.pstats``; pyinstrument ``<name>.pyinstrument.txt`` and ``.html``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from pyinstrument import Profiler
    except ImportError:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            call()
        finally:
            profiler.disable()
        path = folder / f"{name}.cprofile.txt"
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
        path.write_text(text.getvalue(), encoding="utf-8")
        profiler.dump_stats(folder / f"{name}.pstats")
        return str(path)
    sampler = Profiler(interval=0.0005)
    sampler.start()
    try:
        call()
    finally:
        sampler.stop()
    path = folder / f"{name}.pyinstrument.txt"
    path.write_text(
        sampler.output_text(unicode=True, color=False, show_all=False), encoding="utf-8"
    )
    (folder / f"{name}.pyinstrument.html").write_text(sampler.output_html(), encoding="utf-8")
    return str(path)


def print_runs(
    title: str,
    columns: Sequence[tuple[str, str]],
    runs: Iterable[dict[str, Any]],
    caption: str = "",
) -> None:
    """A table of ``runs``: ``columns`` are (header, ``str.format`` template of a run's fields).

    A cell whose fields are None shows "-"; the first column is left-aligned.
    """
    table = Table(title=title, caption=caption or None)
    for i, (header, _) in enumerate(columns):
        table.add_column(header, justify="right" if i else "left", no_wrap=True)
    for run in runs:
        table.add_row(
            *(
                "-" if any(run[f] is None for f in _fields(template)) else template.format(**run)
                for _, template in columns
            )
        )
    out.print(table)


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def main_with(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
) -> int:
    """Log to stderr, ``run``, then print the report as JSON or a table; 1 on BenchError."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        report = run(args)
    except BenchError as exc:
        err.print(f"[bold red]bench failed[/]: {exc}", highlight=False)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    return 0
