"""What a run makes and removes again: fresh databases, topic prefixes and state folders.

Every measurement starts from nothing: a PostgreSQL database created for it (and
dropped), a temporary SQLite file, a topic prefix no one used before, its topics
ready before the clock starts and deleted at the end of the run, and a folder for its
producers' published state (:func:`scratch_state_dir`), removed at the end too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from sqlalchemy.engine import make_url

from bench.errors import BenchError
from producer.state_changelog import state_topic
from queuestream.databases import create_engine
from queuestream.kafka_clients import admin_client, ensure_topics
from queuestream.producer_status import status_topic
from queuestream.settings import Settings, load_settings
from queuestream.tables import BATCHES, TABLES, topic_for

__all__ = [
    "Prefixes",
    "delete_topics",
    "postgres_database",
    "ready_topics",
    "scratch_state_dir",
    "sqlite_database",
    "writer_engine",
]

# The benchmarks' logger, so that its warnings read "bench: ..." as they always did.
log = logging.getLogger("bench")


#: The setting (:attr:`queuestream.settings.Settings.state_dir`) that
#: :func:`scratch_state_dir` points at a throwaway folder.
STATE_DIR_VARIABLE = "QUEUESTREAM_STATE_DIR"


@contextlib.contextmanager
def scratch_state_dir() -> Iterator[str]:
    """A throwaway folder for the published state of every producer the run starts, in
    this process and in the commands it runs (``QUEUESTREAM_STATE_DIR`` while it lasts),
    removed at the end. A benchmark's producer starts from nothing anyway (a fresh
    prefix), and a minute of ``make bench-freshness`` leaves a cache of about 50 MB
    that was kept under ``var/state`` for good. The folder is on the same file system
    as ``var/`` here (the system's temporary folder), so what the state costs is
    measured as before."""
    before = os.environ.get(STATE_DIR_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="qs-bench-state-") as folder:
        os.environ[STATE_DIR_VARIABLE] = folder
        try:
            yield folder
        finally:
            if before is None:
                os.environ.pop(STATE_DIR_VARIABLE, None)
            else:
                os.environ[STATE_DIR_VARIABLE] = before


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


class Prefixes:
    """Fresh topic prefixes (so every refresh writes to new topics), remembered for cleanup."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def new(self, backend: str, what: str) -> str:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-{backend}-{what}"
        self.made.append(prefix)
        return prefix


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


def delete_topics(bootstrap: str, prefixes: list[str]) -> None:
    if not prefixes:
        return
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    admin = admin_client(settings)
    topics = [topic_for(p, s) for p in prefixes for s in [t.name for t in TABLES] + [BATCHES]]
    # The producer's own compacted topics (its state and status) go with them.
    topics += [name for p in prefixes for name in (state_topic(p), status_topic(p))]
    try:
        existing = set(admin.list_topics(timeout=15).topics)
        doomed = [t for t in topics if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    future.result()
    except KafkaException as exc:
        log.warning("could not delete the benchmark topics: %s", exc)
