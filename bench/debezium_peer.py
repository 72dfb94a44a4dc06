"""Debezium's JDBC sink as the consumers' peer: the same events, in the same run.

``python -m bench.consumers --peer debezium`` (issue 10, goal 2). The refresh is then
published in registry mode (the Connect path: Apicurio's converter reads Confluent
framing; a registry is started here with scripts/registry-local.sh unless
``SCHEMA_REGISTRY_URL`` names one), and for each target a sink connector reads the
topics that target reads, into a fresh PostgreSQL database on the same server, on one
Kafka Connect worker started here with scripts/connect-local.sh (both stop at the end,
and by themselves if this process dies).

The connector is docs/kafka-connect.md's (``bench.connect_sink.documented_properties``) with three
changes: ``topics`` names the target's topics instead of ``topics.regex``,
``collection.name.format=${source.table}`` (the benchmark's topic prefixes hold hyphens,
which the sink's default unquoted table names cannot), and ``batch.size`` 10,000 (the
sink's default is 500; a user loading a refresh raises it). The worker runs with the
full JIT and a 1 GB heap, warmed up first as a long-running worker is: one untimed
connector over the first target's topics (:func:`warm_up`). Timed by polling the row
counts of the sink's tables (every :data:`POLL_SECONDS`) from the connector's creation:
``seconds`` until every event's row is there, ``apply_seconds`` from the first row seen
(the counterpart of the consumer's apply: fetching, converting and writing). Every
refresh event is a distinct row (one refresh, no deletes), so the rows expected are the
events.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.connect_sink import Connector, documented_properties
from bench.errors import BenchError, Deadline
from bench.output import Progress
from bench.scratch import postgres_database
from bench.services import run_script
from consumers import target_named
from queuestream.databases import create_engine
from queuestream.settings import Settings
from queuestream.tables import TABLES_BY_NAME, topic_for

__all__ = ["PEERS", "Peer", "PeerRun", "measure_peer", "peer_services", "warm_up"]

PEERS = ("debezium",)
POLL_SECONDS = 0.1
BATCH_SIZE = "10000"
START_TIMEOUT = 180  # seconds for a script's `up` (a cold fetch of the plugins excluded)
FETCH_TIMEOUT = 1200  # seconds for a cold download or build from Maven Central
#: The worker's JVM as a user runs one: the full JIT (connect-local.sh's default stops at
#: C1 to start fast, which caps throughput), as make bench does for its broker.
CONNECT_HEAP_OPTS = "-Xms256m -Xmx1g"
CONNECT_JVM_OPTS = "-XX:+UseParallelGC -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true"


@dataclass(frozen=True)
class Peer:
    """The running peer: the Connect worker's REST URL and the registry's URLs."""

    rest_url: str
    registry_url: str  # Confluent-compatible: the producer's schema_registry_url
    registry_api: str  # Apicurio's own API: what its converter calls


@dataclass
class PeerRun:
    """Debezium's sink over one target's events; seconds here, rates in :meth:`as_dict`."""

    target: str
    events: int
    seconds: float = 0.0  # connector created -> the last row in
    apply_seconds: float = 0.0  # first row in -> the last row in
    batch_size: str = BATCH_SIZE

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_per_second"] = round(self.events / self.seconds, 1)
        data["apply_rows_per_second"] = round(self.events / self.apply_seconds, 1)
        return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _service(name: str, env: dict[str, str]) -> Iterator[str]:
    """``scripts/NAME`` fetched and up (its URL), down at the end."""
    run_script(name, "fetch", env=env, timeout=FETCH_TIMEOUT)
    url = run_script(name, "up", env=env, timeout=START_TIMEOUT)
    try:
        yield url
    finally:
        with contextlib.suppress(BenchError):
            run_script(name, "down", env=env, timeout=60)


@contextlib.contextmanager
def peer_services(bootstrap: str, progress: Progress) -> Iterator[Peer]:
    """A schema registry (unless ``SCHEMA_REGISTRY_URL``) and a Connect worker on ``bootstrap``."""
    owner = str(os.getpid())
    with contextlib.ExitStack() as stack:
        registry = os.environ.get("SCHEMA_REGISTRY_URL")
        if not registry:
            progress("peer: starting a schema registry (scripts/registry-local.sh)")
            env = {**os.environ, "REGISTRY_PORT": str(_free_port()), "REGISTRY_OWNER_PID": owner}
            registry = stack.enter_context(_service("registry-local.sh", env))
        base, found, _ = registry.rstrip("/").partition("/apis/ccompat/")
        if not found:
            msg = f"--peer debezium needs Apicurio's registry (/apis/ccompat/v7), not {registry}"
            raise BenchError(msg)
        progress("peer: starting a Kafka Connect worker (scripts/connect-local.sh)")
        env = {
            **os.environ,
            "CONNECT_PORT": str(_free_port()),
            "CONNECT_BOOTSTRAP_SERVERS": bootstrap,
            "CONNECT_OWNER_PID": owner,
            "CONNECT_HEAP_OPTS": CONNECT_HEAP_OPTS,
            "CONNECT_JVM_OPTS": CONNECT_JVM_OPTS,
        }
        rest = stack.enter_context(_service("connect-local.sh", env))
        yield Peer(rest, registry, f"{base}/apis/registry/v2")


def _config(peer: Peer, settings: Settings, tables: tuple[str, ...], url: str) -> dict[str, str]:
    config = documented_properties("sink")
    del config["topics.regex"]
    target = make_url(url)
    config.update(
        {
            "topics": ",".join(topic_for(settings.topic_prefix, t) for t in tables),
            "collection.name.format": "${source.table}",
            "batch.size": BATCH_SIZE,
            "connection.url": f"jdbc:postgresql://{target.host}:{target.port}/{target.database}",
            "connection.username": target.username or "postgres",
            "connection.password": target.password or "",
            "key.converter.apicurio.registry.url": peer.registry_api,
            "value.converter.apicurio.registry.url": peer.registry_api,
        }
    )
    return config


def _rows(conn: sa.Connection, tables: list[str]) -> int:
    total = 0
    for table in tables:
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None:
            total += int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    return total


def measure_peer(
    name: str,
    settings: Settings,
    events: int,
    server_url: str,
    peer: Peer,
    deadline: Deadline,
    progress: Progress,
) -> PeerRun:
    """Debezium's sink over target ``name``'s topics into a fresh database, timed."""
    tables = target_named(name).tables
    sink_tables = [TABLES_BY_NAME[t].source.lower() for t in tables]
    item = PeerRun(name, events)
    with postgres_database(server_url) as url:
        connector = Connector(
            peer.rest_url,
            f"bench-{uuid.uuid4().hex[:8]}-{name}",
            _config(peer, settings, tables, url),
        )
        engine = create_engine(url)
        progress(f"debezium ({name}): sinking {events:,} events into a fresh database")
        started = time.monotonic()
        connector.create()
        first: float | None = None
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                while True:
                    deadline.check(f"Debezium's sink for {name}")
                    failure = connector.failure()
                    if failure is not None:
                        msg = f"Debezium's sink for {name} failed: {failure[-3000:]}"
                        raise BenchError(msg)
                    rows = _rows(conn, sink_tables)
                    now = time.monotonic()
                    if rows and first is None:
                        first = now
                    if rows >= events:
                        break
                    time.sleep(POLL_SECONDS)
        finally:
            connector.delete()
            engine.dispose()
    assert first is not None
    item.seconds, item.apply_seconds = now - started, now - first
    progress(
        f"debezium ({name}): {events:,} events in {item.seconds:.2f}s end to end = "
        f"{events / item.seconds:,.0f} rows/s; apply {item.apply_seconds:.2f}s = "
        f"{events / item.apply_seconds:,.0f} rows/s"
    )
    return item


def warm_up(
    name: str,
    settings: Settings,
    events: int,
    server_url: str,
    peer: Peer,
    deadline: Deadline,
    progress: Progress,
) -> None:
    """One untimed run of the sink over target ``name``'s events: the worker's JIT warm."""
    progress("debezium: warming the worker up (one untimed connector)")
    measure_peer(name, settings, events, server_url, peer, deadline, lambda _line: None)
