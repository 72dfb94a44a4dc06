"""Promise 5 in the producer, against a real broker and a real PostgreSQL source.

The ``queuestream produce`` command runs as a user runs it (a process of its own)
against a Kafka broker and a PostgreSQL server of this module's own, which are
stopped and started again (the shared session services are never stopped: other
tests use them at the same time):

* the broker down for longer than a refresh interval: meanwhile no transaction of
  the producer stays open on the source (``pg_stat_activity``: an open REPEATABLE
  READ snapshot would hold back vacuum on the customer's database), the producer
  logs the outage, and once the broker is back every row version arrives once;
* ``produce`` started while the source is down, and the source restarted while
  ``produce`` runs: it keeps running, logs each failed attempt, and catches up,
  with no traceback in its output;
* a connection lost under a streaming read is cleaned up with one DEBUG line
  instead of SQLAlchemy's "Error closing cursor" traceback;
* the broker stopped after a transaction's body has sent its messages (a rolling
  restart): the commit logs each wait and, once the broker is back, completes, every
  message committed once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from producer.publisher import Send, TransactionalPublisher
from producer.queue_procedure import install_queue_procedure
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.kafka_clients import ensure_topics
from queuestream.sync_schema import create_source_schema
from tests import services
from tests.helpers import LoggedCommand, cli_env, producer_settings, wait_for
from tests.integration.kafka_readback import committed_changes, committed_messages
from tests.integration.source_versions import (
    assert_exactly_once,
    source_versions,
    wait_all_published,
)

UTC_ZONE = ZoneInfo("UTC")
#: The producer's application_name on the source, to find its sessions.
APPLICATION = "qs-outage-producer"
INTERVAL = 1.0  # seconds between refreshes
#: Bounds of the waits below (seconds).
FAILURES_SEEN_TIMEOUT = 60
STOP_TIMEOUT = 60
#: The broker stays down at least this long: several refresh intervals.
BROKER_DOWN_SECONDS = 8.0
#: A transaction of the producer older than this counts as held open.
HELD_SECONDS = 3.0


class Source:
    """A sync database of its own on ``own_postgres``, with simulated activity."""

    def __init__(self, server: services.Service, name: str) -> None:
        admin = sa.create_engine(
            server.address, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone TO 'UTC'")
        finally:
            admin.dispose()
        url = make_url(server.address).set(database=name)
        self.url = url.render_as_string(hide_password=False)
        self.producer_url = url.set(query={"application_name": APPLICATION}).render_as_string(
            hide_password=False
        )
        self.engine = create_engine(self.url, writer=True, poolclass=sa.pool.NullPool)
        create_source_schema(self.engine)
        self._seed = 0

    def simulate(self, actions: int) -> None:
        self._seed += 1
        Simulator(self.engine, UTC_ZONE, seed=self._seed).run(actions, per_transaction=10)

    def producer_transactions(self) -> list[tuple[str | None, float]]:
        """State and transaction age (seconds) of each producer session in a transaction."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT state, extract(epoch FROM clock_timestamp() - xact_start) "
                    "FROM pg_stat_activity WHERE application_name = :name "
                    "AND xact_start IS NOT NULL"
                ),
                {"name": APPLICATION},
            ).all()
        return [(state, float(age)) for state, age in rows]

    def producer_waiting(self) -> str | None:
        """The statement of a producer session that waits for a lock, if one does."""
        with self.engine.connect() as conn:
            found: str | None = conn.execute(
                sa.text(
                    "SELECT query FROM pg_stat_activity WHERE application_name = :name "
                    "AND wait_event_type = 'Lock'"
                ),
                {"name": APPLICATION},
            ).scalar()
        return found

    @contextlib.contextmanager
    def locked(self, table: str) -> Iterator[None]:
        """Hold an ACCESS EXCLUSIVE lock on ``table`` (a quoted name) until the block ends
        (or the server stops): whoever reads it waits, inside its transaction."""
        conn = self.engine.connect()
        try:
            conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
        finally:
            with contextlib.suppress(sa.exc.DBAPIError):  # the server may have stopped
                conn.close()

    def close(self) -> None:
        self.engine.dispose()


class Produce:
    """``queuestream produce`` in a process of its own; its log goes to a file.

    Used as a context manager: a process still running at the end is stopped.
    """

    def __init__(self, source: Source, bootstrap: str, prefix: str, log: Path, **more: str) -> None:
        self.source = source
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.log_path = log
        env = cli_env(
            bootstrap,
            prefix,
            QUEUESTREAM_SOURCE_URL=source.producer_url,
            QUEUESTREAM_SETTLE_SECONDS="0",
            QUEUESTREAM_PARTITIONS="3",
            QUEUESTREAM_RETRY_BACKOFF_SECONDS="0.5",
            QUEUESTREAM_TARGET_RETRY_MAX_SECONDS="2",
            QUEUESTREAM_BROKER_TIMEOUT_SECONDS="2",
            **more,
        )
        self.command = LoggedCommand(["produce", "--interval", str(INTERVAL)], env, log)
        self.process = self.command.process

    def __enter__(self) -> Produce:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.stop()

    def output(self) -> str:
        return self.command.output()

    def assert_running(self) -> None:
        self.command.assert_running()

    def failed_attempts(self, what: str = "") -> int:
        """Failed attempts logged so far (lines that also hold ``what``); the process
        must still be running."""
        self.assert_running()
        lines = self.output().splitlines()
        return sum(1 for line in lines if "failed (attempt" in line and what in line)

    def outage_lines(self) -> int:
        """Lines logging a broker outage so far: failed attempts, and the waits of a
        commit the broker went away under (it stopped after the refresh began)."""
        self.assert_running()
        lines = self.output().splitlines()
        return sum(1 for line in lines if "failed (attempt" in line or "not acknowledged" in line)

    def logged_more_failures_than(self, count: int) -> bool:
        return self.failed_attempts() > count

    def wait_caught_up(self) -> None:
        """Until every row version the source holds now is committed in Kafka."""
        wait_all_published(self.source.engine, self.bootstrap, self.prefix, self.assert_running)

    def finish(self) -> None:
        """Catch up, stop as by SIGTERM (exit status 0), and every version is in Kafka once."""
        self.wait_caught_up()
        assert self.stop() == 0, self.output()[-3000:]
        published, _ = committed_changes(self.bootstrap, self.prefix)
        assert_exactly_once(published, source_versions(self.source.engine))

    def assert_quiet(self) -> None:
        """The outages were logged as outages: no traceback (SQLAlchemy's "Error closing
        cursor" of a connection the restart killed, or any other)."""
        output = self.output()
        for noise in ("Traceback", "Error closing cursor"):
            assert noise not in output, f"{noise!r} in the producer's output:\n{output[-5000:]}"

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None: still running after STOP_TIMEOUT, then killed)."""
        return self.command.stop(STOP_TIMEOUT)[0]


@pytest.fixture
def source(own_postgres: services.Service, unique: str) -> Iterator[Source]:
    services.control(own_postgres, "up")
    found = Source(own_postgres, f"qs_{unique}_source")
    try:
        yield found
    finally:
        found.close()
        services.control(own_postgres, "up")  # for the next test, whatever happened in this one


def _back_up(server: services.Service, produce: Produce, failures_before: int) -> None:
    """Once the producer has logged a failed attempt since the server stopped, start it."""
    wait_for(
        functools.partial(produce.logged_more_failures_than, failures_before),
        timeout=FAILURES_SEEN_TIMEOUT,
        interval=0.2,
        message="a failed attempt logged while the source is down",
    )
    services.control(server, "up")


def _is_select(query: str) -> bool:
    """A query, also through a server-side cursor (``DECLARE … CURSOR FOR SELECT``)."""
    return "SELECT" in query.upper()


def _restart_while_blocked(
    server: services.Service,
    source: Source,
    produce: Produce,
    table: str,
    reading: Callable[[str], bool],
    meanwhile: Callable[[], None] = lambda: None,
) -> None:
    """Stop the source while the producer waits inside its snapshot, then start it again.

    A lock on ``table`` holds the producer in the statement that reads it; the wait
    must be in a statement for which ``reading`` is true (another statement: release
    and try again). ``meanwhile`` runs while the producer waits.
    """
    deadline = time.monotonic() + FAILURES_SEEN_TIMEOUT
    waiting: str | None = None
    while True:
        assert time.monotonic() < deadline, f"the producer never waited in the statement: {waiting}"
        with source.locked(table):
            waiting = wait_for(
                source.producer_waiting,
                timeout=FAILURES_SEEN_TIMEOUT,
                interval=0.1,
                message=f"the producer waiting for the lock on {table}",
            )
            assert waiting is not None
            if reading(waiting):
                meanwhile()
                before = produce.failed_attempts()
                services.control(server, "down")
                break
        time.sleep(0.2)  # held in another statement: let it pass, then lock again
    _back_up(server, produce, before)


def test_broker_outage_releases_the_snapshot_and_loses_nothing(
    own_kafka: services.Service, source: Source, unique: str, tmp_path: Path
) -> None:
    bootstrap = own_kafka.address
    source.simulate(200)
    with Produce(source, bootstrap, unique, tmp_path / "produce.log") as produce:
        produce.wait_caught_up()
        services.control(own_kafka, "down")
        try:
            source.simulate(100)  # changes made while Kafka is down
            held: list[tuple[str | None, float]] = []
            down_since = time.monotonic()
            # Watch the source for several refresh intervals, and until the outage is logged.
            while time.monotonic() - down_since < FAILURES_SEEN_TIMEOUT and (
                time.monotonic() - down_since < BROKER_DOWN_SECONDS or produce.outage_lines() < 2
            ):
                held += [t for t in source.producer_transactions() if t[1] > HELD_SECONDS]
                time.sleep(0.2)
            assert not held, (
                "the producer kept a transaction open on the source while Kafka was down "
                f"(state, age in seconds): {held[:5]}"
            )
            assert produce.outage_lines() >= 2, (
                f"the outage was not logged:\n{produce.output()[-3000:]}"
            )
        finally:
            services.control(own_kafka, "up")
        source.simulate(50)
        produce.finish()
    output = produce.output()
    assert "could not reach the broker" in output or "commit not acknowledged yet" in output


def test_source_down_at_start_and_restarted_while_producing(
    own_kafka: services.Service,
    own_postgres: services.Service,
    source: Source,
    unique: str,
    tmp_path: Path,
) -> None:
    bootstrap = own_kafka.address
    source.simulate(150)
    services.control(own_postgres, "down")
    with Produce(source, bootstrap, unique, tmp_path / "produce.log") as produce:
        # Started while the source is down: it keeps running and logs each attempt.
        wait_for(
            lambda: produce.failed_attempts("is unreachable") >= 2,
            timeout=FAILURES_SEEN_TIMEOUT,
            interval=0.2,
            message="two failed attempts logged while the source is down",
        )
        services.control(own_postgres, "up")
        produce.wait_caught_up()

        # Restarted while producing, at whatever point the refresh is ...
        for round_ in range(2):
            source.simulate(60)
            before = produce.failed_attempts()
            time.sleep(0.4 * round_)
            services.control(own_postgres, "down")
            _back_up(own_postgres, produce, before)
        # ... and while it reads rows inside its snapshot.
        source.simulate(60)
        _restart_while_blocked(own_postgres, source, produce, '"Payments"', _is_select)
        source.simulate(40)
        produce.finish()
    produce.assert_quiet()


def test_procedure_mode_survives_a_source_restart_mid_snapshot(
    own_kafka: services.Service,
    own_postgres: services.Service,
    source: Source,
    unique: str,
    tmp_path: Path,
) -> None:
    """Procedure mode reads the queue tables' fingerprint in a snapshot before it runs
    the source's refresh (republish-before-refresh); the source stopping right there
    is an outage like any other."""
    bootstrap = own_kafka.address
    install_queue_procedure(source.engine)
    source.simulate(100)
    with Produce(
        source,
        bootstrap,
        unique,
        tmp_path / "produce.log",
        QUEUESTREAM_REFRESH_MODE="procedure",
        QUEUESTREAM_REFRESH_STATEMENT="CALL queue.refresh()",
        QUEUESTREAM_REFRESH_SINCE_STATEMENT="CALL queue.refresh(:since)",
    ) as produce:
        produce.wait_caught_up()
        # Nothing pending: the producer reads the fingerprint (held there by the lock) or
        # runs CALL queue.refresh(). Changes are simulated only while it is held, so none
        # is stamped before a CALL and committed after it (which the CALL would miss).
        _restart_while_blocked(
            own_postgres,
            source,
            produce,
            'queue."Payments"',
            lambda query: _is_select(query) and "__customer_id" not in query,
            meanwhile=lambda: source.simulate(50),
        )
        produce.finish()
    produce.assert_quiet()


def test_a_connection_lost_under_a_streaming_read_is_cleaned_up_quietly(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The source reader streams rows through a server-side cursor (``yield_per``). When
    the server ends the connection between two fetches, closing the result sends CLOSE
    to a connection that is gone; SQLAlchemy logged that as "Error closing cursor" with
    a traceback on top of the outage's own line. The window is narrow in a restart, so
    the server ends this one connection (pg_terminate_backend) at that point."""
    engine = create_engine(postgres_url)
    try:
        conn = engine.connect()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        result = conn.execution_options(yield_per=10).execute(
            sa.text("SELECT n FROM generate_series(1, 1000) AS n")
        )
        assert next(iter(result)) == (1,)
        with sa.create_engine(postgres_url, poolclass=sa.pool.NullPool).connect() as admin:
            assert admin.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
        with caplog.at_level(logging.DEBUG):
            result.close()
            with contextlib.suppress(sa.exc.OperationalError):  # the rollback: the outage
                conn.close()
        with engine.connect() as again:  # the pool gives a working connection again
            assert again.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        engine.dispose()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]
    assert "Error closing cursor of a lost connection (" in caplog.text


def test_a_commit_the_broker_stops_under_waits_logged_and_completes_once_it_is_back(
    own_kafka: services.Service, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker stops inside the transaction (after the body's sends, before the
    commit: the window a rolling restart meets). The commit must say at once, and
    again at each step, that it waits; resumed (never aborted), it commits once the
    broker is back, and every message is committed exactly once."""
    settings = producer_settings("sqlite://", own_kafka.address, unique, broker_timeout_seconds=2)
    topic = f"{unique}.orders"
    ensure_topics(settings)
    publisher = TransactionalPublisher(settings)
    messages = 50
    restarted = threading.Event()

    def body(send: Send) -> None:
        for n in range(messages):
            send(topic, str(n).encode(), f"value {n}".encode(), n % 3)
        services.control(own_kafka, "down")  # the sends are queued or in flight, not committed
        # Back after several of the commit's steps, from another thread: the commit
        # below runs meanwhile.
        threading.Thread(target=_up_later, args=(own_kafka, restarted), daemon=True).start()

    try:
        with caplog.at_level(logging.WARNING, logger="producer.publisher"):
            publisher.transaction(body)
    finally:
        restarted.wait(KAFKA_BACK_TIMEOUT)
        services.control(own_kafka, "up")  # for the next test, whatever happened in this one
        publisher.close()
    waits = [r.getMessage() for r in caplog.records if "not acknowledged yet" in r.getMessage()]
    assert len(waits) >= 2, f"the commit's waits were not logged: {waits}"
    assert all(w.startswith("commit ") for w in waits), waits  # resumed, never aborted
    committed = committed_messages(own_kafka.address, [topic])
    assert sorted(int(m.key() or b"-1") for m in committed) == list(range(messages))


#: How long the broker stays down under a commit, and the bound on its start again.
COMMIT_OUTAGE_SECONDS = 6.0
KAFKA_BACK_TIMEOUT = 120.0


def _up_later(kafka: services.Service, done: threading.Event) -> None:
    try:
        time.sleep(COMMIT_OUTAGE_SECONDS)
        services.control(kafka, "up")
    finally:
        done.set()
