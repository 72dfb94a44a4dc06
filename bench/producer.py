#!/usr/bin/env python
"""Producer throughput: one refresh of N changed rows, PostgreSQL and SQLite, against Kafka.

For each backend the benchmark

1. fills a fresh source database (PostgreSQL: a database it creates and drops;
   SQLite: a temporary file) with about ``--rows`` changed rows across the six
   tables, written by ``queuestream.producer.simulator.Simulator``
   (``--generator simulator``, the default), or simulated once into SQLite and
   bulk-copied into PostgreSQL (``--generator copy``: faster, same rows in both);
2. runs ONE refresh with a ``Refresher`` on a fresh topic prefix (new topics,
   ``settle_seconds=0``), timed from the call until Kafka acknowledged the
   commit: **queuestream events/s**;
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

    .venv/bin/python bench/producer.py                  # both backends, 200,000 rows
    .venv/bin/python bench/producer.py --rows 50000 --backends sqlite --json
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
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import libversion as librdkafka_version
from queuestream.producer.refresh import Refresher, RefreshResult
from queuestream.producer.simulator import Simulator
from queuestream.producer.source_models import Base, create_source_schema
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from queuestream.databases import create_engine
from queuestream.kafka_clients import admin_client, ensure_topics, producer_config
from queuestream.settings import Settings, load_settings
from queuestream.tables import BATCHES, TABLES, topic_for

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_TABLES = [spec.source for spec in TABLES]
BACKENDS = ("postgres", "sqlite")
GOAL_EVENTS_PER_SECOND = 50_000  # the target for PostgreSQL

log = logging.getLogger("bench.producer")
out = Console()
err = Console(stderr=True)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# ----------------------------------------------------------------- options --


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/producer.py",
        description="Refresh throughput (events/s) of queuestream against Kafka, "
        "with the raw confluent-kafka ceiling for the same bytes.",
    )
    p.add_argument("--rows", type=int, default=200_000,
                   help="changed rows to create per backend (default: %(default)s)")
    p.add_argument(
        "--backends", default=",".join(BACKENDS),
        help="comma-separated: postgres, sqlite (default: %(default)s)",
    )
    p.add_argument("--postgres-url", help="SQLAlchemy URL of a PostgreSQL server "
                   "(default: scripts/postgres-local.sh url)")
    p.add_argument("--bootstrap-servers", help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS, "
                   "else scripts/kafka-local.sh bootstrap)")
    p.add_argument("--generator", choices=["simulator", "copy"], default="simulator",
                   help="simulator: run the Simulator on each backend; copy: simulate into "
                   "SQLite once and bulk-copy the rows into PostgreSQL")
    p.add_argument("--per-transaction", type=int, default=500,
                   help="simulator actions per source transaction (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default: %(default)s)")
    p.add_argument("--partitions", type=int, default=6,
                   help="partitions per change topic (default: %(default)s)")
    p.add_argument("--first-window-hours", type=float, default=24.0 * 7,
                   help="the refresh's first window; must cover the generated rows "
                   "(default: %(default)s)")
    p.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka producer option for queuestream and the ceiling alike "
                   "(settings.kafka), e.g. --kafka linger.ms=500; repeatable")
    p.add_argument("--breakdown", action="store_true",
                   help="also time read-only and read+encode passes without Kafka")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="run one more refresh per backend under a profiler; reports go to DIR")
    p.add_argument("--no-ceiling", action="store_true", help="skip the raw-producer ceiling")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the topics made")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="give up after this many seconds in all (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    p.add_argument("-v", "--verbose", action="store_true", help="log queuestream at INFO")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown or not args.backends:
        p.error(f"--backends: unknown {', '.join(unknown) or '(none given)'}; use postgres, sqlite")
    if args.rows < 1:
        p.error("--rows must be at least 1")
    try:
        args.kafka = dict(item.split("=", 1) for item in args.kafka)
    except ValueError:
        p.error("--kafka takes KEY=VALUE")
    return args


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
    source_url: str, bootstrap: str, prefix: str, args: argparse.Namespace
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
    )


class Prefixes:
    """Fresh topic prefixes (so every refresh writes to new topics), remembered for cleanup."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def new(self, backend: str, what: str) -> str:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-{backend}-{what}"
        self.made.append(prefix)
        return prefix


# --------------------------------------------------------- source databases --


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
        msg = (f"PostgreSQL at {make_url(server_url).render_as_string(hide_password=True)} is "
               f"unreachable ({reason}): start it (make pg-up) or pass --postgres-url")
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
            t: int(conn.execute(sa.select(sa.func.count()).select_from(Base.metadata.tables[t]))
                   .scalar_one())
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


def simulate(url: str, backend: str, rows: int, args: argparse.Namespace, deadline: Deadline,
             progress: Callable[[str], None]) -> Generation:
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
            progress(f"{backend}: simulated {actions:,} actions, {have:,} rows "
                     f"({have / elapsed:,.0f} rows/s)")
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


# ---------------------------------------------------------------- refresh --


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
    elections out of both timings, the refresh's and the ceiling's.
    """
    ensure_topics(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"bench-ready-{uuid.uuid4().hex}"})
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


class _NoKafka:
    """Stands in for TransactionalPublisher: runs the body with a send that drops messages."""

    def __init__(self) -> None:
        self.messages = 0

    def transaction(self, body: Callable[[Callable[[str, bytes, bytes, int], None]], None]) -> None:
        def send(_topic: str, _key: bytes, _value: bytes, _partition: int) -> None:
            self.messages += 1

        body(send)

    def close(self) -> None:
        pass


def encode_only_pass(settings: Settings) -> float:
    """The refresh without Kafka: snapshot, read, overlap, build and encode; send is a no-op."""
    refresher = new_refresher(settings)
    real = refresher.publisher
    refresher.publisher = _NoKafka()
    try:
        started = time.perf_counter()
        refresher.refresh()
        return time.perf_counter() - started
    finally:
        refresher.publisher = real
        refresher.close()


def read_only_pass(settings: Settings) -> tuple[float, int]:
    """Only the rows: the same snapshot queries, rows turned into dicts, nothing built."""
    refresher = new_refresher(settings)
    try:
        started = time.perf_counter()
        window = refresher.planner.plan(refresher.progress, refresher.reader.safe_end())
        count = 0
        with refresher.reader.frozen() as snapshot:
            for spec in TABLES:
                for _row in snapshot.changed_rows(spec, window.read_from, window.end):
                    count += 1
        return time.perf_counter() - started, count
    finally:
        refresher.close()


def profiled_refresh(settings: Settings, folder: Path, backend: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    refresher = new_refresher(settings)
    try:
        try:
            from pyinstrument import Profiler
        except ImportError:
            profiler = cProfile.Profile()
            profiler.enable()
            refresher.refresh()
            profiler.disable()
            path = folder / f"refresh-{backend}.cprofile.txt"
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)
            path.write_text(text.getvalue(), encoding="utf-8")
            profiler.dump_stats(folder / f"refresh-{backend}.pstats")
            return str(path)
        sampler = Profiler(interval=0.0005)
        sampler.start()
        refresher.refresh()
        sampler.stop()
        path = folder / f"refresh-{backend}.pyinstrument.txt"
        path.write_text(sampler.output_text(unicode=True, color=False, show_all=False),
                        encoding="utf-8")
        (folder / f"refresh-{backend}.pyinstrument.html").write_text(
            sampler.output_html(), encoding="utf-8")
        return str(path)
    finally:
        refresher.close()


# ---------------------------------------------------------------- ceiling --

Message = tuple[str, int, bytes | None, bytes | None]  # (topic suffix, partition, key, value)


def read_back(bootstrap: str, prefix: str, deadline: Deadline) -> list[Message]:
    """Every committed message under ``prefix``, in a produce-like order.

    BEGIN marker, then each table in refresh order with its partitions
    interleaved (each partition keeps its own order), then END.
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-readback-{uuid.uuid4().hex}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    })
    suffixes = [spec.name for spec in TABLES] + [BATCHES]
    try:
        metadata = consumer.list_topics(timeout=15)
        assignment = []
        for suffix in suffixes:
            topic = topic_for(prefix, suffix)
            if topic not in metadata.topics:
                msg = f"topic {topic} not found when reading back"
                raise BenchError(msg)
            for partition in metadata.topics[topic].partitions:
                assignment.append(TopicPartition(topic, partition, 0))
        consumer.assign(assignment)
        pending = {(tp.topic, tp.partition) for tp in assignment}
        per_partition: dict[tuple[str, int], list[Message]] = {k: [] for k in pending}
        cut = len(prefix) + 1
        while pending:
            deadline.check(f"reading back {prefix}.*")
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                error = message.error()
                topic, partition = str(message.topic()), int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard((topic, partition))
                        continue
                    msg = f"reading back {topic}[{partition}]: {error.str()}"
                    raise BenchError(msg)
                per_partition[(topic, partition)].append(
                    (topic[cut:], partition, message.key(), message.value())
                )
    finally:
        consumer.close()
    batches = per_partition[(topic_for(prefix, BATCHES), 0)]
    ordered: list[Message] = batches[:1]
    for spec in TABLES:
        topic = topic_for(prefix, spec.name)
        streams = [per_partition[k] for k in sorted(per_partition) if k[0] == topic]
        longest = max((len(s) for s in streams), default=0)
        for i in range(longest):
            ordered.extend(s[i] for s in streams if i < len(s))
    ordered.extend(batches[1:])
    return ordered


def ceiling(messages: list[Message], settings: Settings) -> float:
    """Produce ``messages`` with a plain transactional Producer; seconds begin -> commit."""
    ready_topics(settings)
    producer = Producer(producer_config(settings))
    producer.init_transactions(60)
    prefix = settings.topic_prefix
    topics = {suffix: topic_for(prefix, suffix) for suffix in [t.name for t in TABLES] + [BATCHES]}
    produce = producer.produce
    poll = producer.poll
    started = time.perf_counter()
    producer.begin_transaction()
    for suffix, partition, key, value in messages:
        topic = topics[suffix]
        while True:
            try:
                produce(topic, value, key, partition)
                break
            except BufferError:
                poll(0.05)
    producer.commit_transaction(120)
    seconds = time.perf_counter() - started
    producer.flush(10)
    return seconds


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


# -------------------------------------------------------------------- main --


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


def git_describe() -> str | None:
    """The commit measured, with "+dirty" when the work tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                               check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head.strip() + ("+dirty" if dirty.strip() else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = Deadline(args.timeout)
    quiet = args.json

    def progress(text: str) -> None:
        if not quiet:
            err.print(f"[dim]{text}[/]", highlight=False)

    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    prefixes = Prefixes()
    runs: list[Run] = []
    generations: list[Generation] = []
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        if "postgres" in args.backends:
            urls["postgres"] = stack.enter_context(postgres_database(resolve_postgres(args)))
        if "sqlite" in args.backends or args.generator == "copy":
            urls["sqlite"] = stack.enter_context(sqlite_database())

        # 1. rows
        if args.generator == "copy":
            progress(f"simulating {args.rows:,} rows into SQLite, then copying them")
            generations.append(simulate(urls["sqlite"], "sqlite", args.rows, args, deadline,
                                        progress))
            if "postgres" in urls:
                generations.append(copy_rows(urls["sqlite"], urls["postgres"], "postgres",
                                             deadline))
        else:
            for backend in args.backends:
                progress(f"simulating {args.rows:,} rows into {backend}")
                generations.append(simulate(urls[backend], backend, args.rows, args, deadline,
                                            progress))
        for g in generations:
            progress(f"{g.backend}: {g.rows:,} rows by {g.method} in {g.seconds:.1f}s "
                     f"({g.rows_per_second:,.0f} rows/s"
                     + (f", {g.actions / g.seconds:,.0f} actions/s)" if g.actions else ")"))
        rows_by_backend = {g.backend: g.rows for g in generations}

        # 2. one refresh per backend, 3. its ceiling
        try:
            for backend in args.backends:
                deadline.check(f"starting the {backend} refresh")
                prefix = prefixes.new(backend, "qs")
                settings = bench_settings(urls[backend], bootstrap, prefix, args)
                progress(f"{backend}: refresh to {prefix}.*")
                result, seconds = timed_refresh(settings)
                item = Run(backend, rows_by_backend[backend], result.events, seconds,
                           messages=result.events + 2, counts=dict(result.counts), prefix=prefix)
                runs.append(item)
                progress(f"{backend}: {item.events:,} events in {seconds:.2f}s = "
                         f"{item.events_per_second:,.0f} events/s")
                if item.events != item.rows:
                    log.warning("%s: %d events for %d rows in the source", backend,
                                item.events, item.rows)
                if not args.no_ceiling:
                    messages = read_back(bootstrap, prefix, deadline)
                    item.ceiling_messages = len(messages)
                    if len(messages) != item.messages:
                        msg = (f"{backend}: read back {len(messages)} committed messages, "
                               f"expected {item.messages}")
                        raise BenchError(msg)
                    ceiling_prefix = prefixes.new(backend, "raw")
                    raw = bench_settings(urls[backend], bootstrap, ceiling_prefix, args)
                    item.ceiling_seconds = ceiling(messages, raw)
                    del messages
                    progress(f"{backend}: ceiling {item.ceiling_events_per_second:,.0f} "
                             f"events/s ({item.ceiling_seconds:.2f}s)")
                if args.breakdown:
                    deadline.check(f"{backend} breakdown")
                    seconds_read, count = read_only_pass(
                        bench_settings(urls[backend], bootstrap, prefixes.new(backend, "r"), args))
                    item.read_only_seconds = seconds_read
                    item.encode_only_seconds = encode_only_pass(
                        bench_settings(urls[backend], bootstrap, prefixes.new(backend, "e"), args))
                    progress(f"{backend}: read only {count / seconds_read:,.0f} rows/s; "
                             f"read+encode {item.events / item.encode_only_seconds:,.0f} events/s")
                if args.profile:
                    deadline.check(f"{backend} profile")
                    profile_prefix = prefixes.new(backend, "prof")
                    item.profile = profiled_refresh(
                        bench_settings(urls[backend], bootstrap, profile_prefix, args),
                        args.profile, backend)
                    progress(f"{backend}: profile in {item.profile}")
        finally:
            if not args.keep_topics:
                # every Refresher creates its topics, the breakdown passes' too
                delete_topics(bootstrap, prefixes.made)

    return {
        "rows_requested": args.rows,
        "generator": args.generator,
        "generation": [
            {**asdict(g), "rows_per_second": round(g.rows_per_second, 1),
             "actions_per_second": round(g.actions / g.seconds, 1) if g.actions else None}
            for g in generations
        ],
        "runs": [r.as_dict() for r in runs],
        "goal_events_per_second": GOAL_EVENTS_PER_SECOND,
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "librdkafka": librdkafka_version()[0],
            "bootstrap_servers": bootstrap,
            "broker_jvm_flags": broker_jvm_flags(bootstrap),
            "partitions": args.partitions,
            "kafka_options": args.kafka,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "git": git_describe(),
        },
    }


def print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"queuestream producer, one refresh ({report['generator']} rows)")
    for name in ("backend", "rows", "events", "seconds", "events/s", "ceiling events/s", "ratio"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for r in report["runs"]:
        ceiling_eps = r["ceiling_events_per_second"]
        table.add_row(
            r["backend"], f"{r['rows']:,}", f"{r['events']:,}", f"{r['seconds']:.2f}",
            f"{r['events_per_second']:,.0f}",
            f"{ceiling_eps:,.0f}" if ceiling_eps else "-",
            f"{r['ratio']:.2f}" if r["ratio"] is not None else "-",
        )
    out.print(table)
    for g in report["generation"]:
        speed = f"{g['rows_per_second']:,.0f} rows/s"
        if g["actions_per_second"]:
            speed += f", {g['actions_per_second']:,.0f} actions/s"
        out.print(f"rows in {g['backend']}: {g['rows']:,} by {g['method']} in "
                  f"{g['seconds']:.1f}s ({speed})")
    for r in report["runs"]:
        if r["read_only_events_per_second"]:
            out.print(f"{r['backend']} breakdown: read rows only "
                      f"{r['read_only_events_per_second']:,.0f}/s; read+build+encode, no Kafka "
                      f"{r['encode_only_events_per_second']:,.0f} events/s")
        if r["profile"]:
            out.print(f"{r['backend']} profile: {r['profile']}")
    env = report["environment"]
    out.print(f"{env['cpus']} CPUs (load {env['load_average'][0]:.2f}), Python {env['python']}, "
              f"librdkafka {env['librdkafka']}, {env['partitions']} partitions, "
              f"queuestream {env['git']}, broker {env['bootstrap_servers']}"
              + (f" ({env['broker_jvm_flags']})" if env["broker_jvm_flags"] else "")
              + (f", producer options {env['kafka_options']}" if env["kafka_options"] else ""))
    for r in report["runs"]:
        if r["backend"] == "postgres":
            verdict = "meets" if r["events_per_second"] >= report["goal_events_per_second"] \
                else "below"
            out.print(f"goal ≥ {report['goal_events_per_second']:,} events/s from PostgreSQL: "
                      f"{verdict} ({r['events_per_second']:,.0f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
