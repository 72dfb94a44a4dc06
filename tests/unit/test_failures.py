"""The one classification of failures (queuestream.failures), on real exception objects.

SQLite errors come from real sqlite3 connections, PostgreSQL connection failures
from a real psycopg connection attempt (to a port where nothing listens), server
errors from psycopg's classes for their SQLSTATE, and every database error is
wrapped by SQLAlchemy as the commands meet it. The PostgreSQL refusals that need
a server (a wrong password, a missing database) are in
tests/integration/test_permanent_failures.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import tomllib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry.error import SchemaRegistryError

from producer.publisher import TransactionalPublisher
from queuestream.databases import create_engine
from queuestream.errors import (
    BrokerAccessError,
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseAccessError,
    DatabaseUnavailableError,
    FencedError,
    RetriableError,
    SchemaError,
    SettingsFileError,
)
from queuestream.failures import (
    broker_failure,
    database_failure,
    escaped_failure,
    hide_logins,
    registry_failure,
    sqlstate_of,
)
from queuestream.kafka_clients import create_topics
from queuestream.settings import load_settings
from tests.helpers import run_cli
from tests.services import free_ports

WHERE = "postgresql://app:***@db/sync"


def _wrapped(orig: Exception, base: type[Exception] | None = None) -> sa.exc.DBAPIError:
    """``orig`` wrapped by SQLAlchemy as an engine raises it (``base``: its driver's Error)."""
    if base is None:
        base = sqlite3.Error if isinstance(orig, sqlite3.Error) else psycopg.Error
    wrapped = sa.exc.DBAPIError.instance("SELECT 1", None, orig, base)
    assert isinstance(wrapped, sa.exc.DBAPIError)
    return wrapped


def _sqlalchemy_error(url: str, statement: str = "SELECT 1") -> sa.exc.DBAPIError:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    except sa.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    pytest.fail(f"{statement} on {url} did not fail")


def test_a_sqlite_path_that_is_a_directory_is_permanent(tmp_path: Path) -> None:
    exc = _sqlalchemy_error(f"sqlite:///{tmp_path}")
    failure = database_failure(exc, f"sqlite:///{tmp_path}")
    assert isinstance(failure, DatabaseAccessError)
    assert isinstance(failure, ConfigurationError)
    assert not isinstance(failure, RetriableError)
    assert "cannot be opened" in str(failure)
    assert str(tmp_path) in str(failure)


def test_a_missing_sqlite_table_is_permanent(tmp_path: Path) -> None:
    exc = _sqlalchemy_error(f"sqlite:///{tmp_path / 'x.db'}", "SELECT * FROM nowhere")
    failure = database_failure(exc, "x.db")
    assert isinstance(failure, DatabaseAccessError)
    assert "no such table: nowhere" in str(failure)
    assert "a table is missing" in str(failure)
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER)")
    engine.dispose()
    exc = _sqlalchemy_error(f"sqlite:///{tmp_path / 'x.db'}", "INSERT INTO t (nope) VALUES (1)")
    failure = database_failure(exc, "x.db")
    assert isinstance(failure, DatabaseAccessError)
    assert "a column is missing" in str(failure)


def test_a_locked_sqlite_database_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        waiter.close()
        holder.close()
    assert "database is locked" in str(caught.value)
    failure = database_failure(_wrapped(caught.value), "locked.db")
    assert isinstance(failure, DatabaseUnavailableError)
    assert "retry when it is back" in str(failure)


def test_a_refused_postgresql_connection_is_transient() -> None:
    (port,) = free_ports(1)
    url = f"postgresql://app:hunter2@127.0.0.1:{port}/sync"
    exc = _sqlalchemy_error(url)
    assert sqlstate_of(exc) == "08001"
    failure = database_failure(exc, f"postgresql://app:***@127.0.0.1:{port}/sync")
    assert isinstance(failure, DatabaseUnavailableError)
    assert "Connection refused" in str(failure)
    assert "hunter2" not in str(failure)


@pytest.mark.parametrize(
    ("sqlstate", "expected", "says"),
    [
        ("28P01", DatabaseAccessError, "check the user name and password"),
        ("28000", DatabaseAccessError, "pg_hba.conf"),
        ("3D000", DatabaseAccessError, "the database does not exist"),
        ("42P01", DatabaseAccessError, "a table is missing"),
        ("42501", DatabaseAccessError, "GRANT"),
        ("57P01", DatabaseUnavailableError, "retry when it is back"),
        ("57P02", DatabaseUnavailableError, "retry when it is back"),
        ("57P03", DatabaseUnavailableError, "retry when it is back"),
        ("08006", DatabaseUnavailableError, "retry when it is back"),
        ("40P01", DatabaseUnavailableError, "another transaction held the same rows"),
        ("40001", DatabaseUnavailableError, "another transaction held the same rows"),
    ],
)
def test_postgresql_server_errors_by_sqlstate(
    sqlstate: str, expected: type[Exception], says: str
) -> None:
    orig = psycopg.errors.lookup(sqlstate)("the server's own words")
    assert orig.sqlstate == sqlstate
    failure = database_failure(_wrapped(orig), WHERE)
    assert type(failure) is expected
    assert says in str(failure)
    assert WHERE in str(failure)


@pytest.mark.parametrize(
    ("server_says", "sqlstate", "expected"),
    [
        ('FATAL:  password authentication failed for user "app"', "28P01", DatabaseAccessError),
        ('FATAL:  database "sync" does not exist', "3D000", DatabaseAccessError),
        ('FATAL:  role "app" does not exist', "28000", DatabaseAccessError),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1"', "28000", DatabaseAccessError),
        ("FATAL:  the database system is starting up", "57P03", DatabaseUnavailableError),
        ("FATAL:  the database system is shutting down", "57P01", DatabaseUnavailableError),
        ("timeout expired", "08001", DatabaseUnavailableError),
    ],
)
def test_postgresql_connection_failures_by_the_servers_message(
    server_says: str, sqlstate: str, expected: type[Exception]
) -> None:
    # libpq gives no SQLSTATE for a failed connection attempt; psycopg words it so.
    text = f'connection failed: connection to server at "10.0.0.1", port 5432 failed: {server_says}'
    exc = _wrapped(psycopg.OperationalError(text))
    assert sqlstate_of(exc) == sqlstate
    assert type(database_failure(exc, WHERE)) is expected


_ODBC = "[Microsoft][ODBC Driver 18 for SQL Server]"


@pytest.mark.parametrize(
    ("sqlstate", "server_says", "expected", "advice"),
    [
        ("28000", "[SQL Server]Login failed for user 'sync'.", DatabaseAccessError, "password"),
        (
            "42000",
            '[SQL Server]Cannot open database "sync" requested by the login.',
            DatabaseAccessError,
            "database name",
        ),
        ("42000", "[SQL Server]The SELECT permission was denied", DatabaseAccessError, "GRANT"),
        ("42S02", "[SQL Server]Invalid object name 'dbo.Orders'.", DatabaseAccessError, "table"),
        ("42S22", "[SQL Server]Invalid column name 'ModifiedDate'.", DatabaseAccessError, "column"),
        ("08001", "TCP Provider: No connection could be made", DatabaseUnavailableError, "retry"),
        (
            "08S01",
            "TCP Provider: An existing connection was forcibly closed",
            DatabaseUnavailableError,
            "retry",
        ),
        ("HYT00", "Login timeout expired", DatabaseUnavailableError, "retry"),
        (
            "40001",
            "[SQL Server]Transaction (Process ID 57) was deadlocked",
            DatabaseUnavailableError,
            "retry",
        ),
    ],
)
def test_sql_server_errors_by_the_sqlstate_mssql_python_words(
    sqlstate: str, server_says: str, expected: type[Exception], advice: str
) -> None:
    """mssql-python raises OperationalError for a wrong password as for a lost server,
    and keeps no SQLSTATE, only the standard's words for it: a wrong password must stop
    the command, not be waited out as an outage."""
    from mssql_python import exceptions  # the test venv has the extra: never skipped

    orig = exceptions.sqlstate_to_exception(sqlstate, _ODBC + server_says)  # as the driver does
    assert orig is not None
    exc = _wrapped(orig, exceptions.Error)
    assert sqlstate_of(exc) == sqlstate
    failure = database_failure(exc, WHERE)
    assert type(failure) is expected
    assert advice in str(failure)
    # The server's own words, without the driver's brackets.
    assert server_says.removeprefix("[SQL Server]") in str(failure)
    assert "[Microsoft]" not in str(failure)


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("28000", DatabaseAccessError),
        ("08S01", DatabaseUnavailableError),
        ("IM002", DatabaseAccessError),
    ],
)
def test_sql_server_errors_through_pyodbc_by_their_sqlstate(
    sqlstate: str, expected: type[Exception]
) -> None:
    class Error(Exception):  # pyodbc's errors: (sqlstate, message)
        pass

    Error.__module__ = "pyodbc"
    exc = _wrapped(
        Error(sqlstate, f"{_ODBC}[SQL Server]the server's words (0) (SQLDriverConnect)"), Error
    )
    assert sqlstate_of(exc) == sqlstate
    assert type(database_failure(exc, WHERE)) is expected


def test_the_database_refusing_the_data_is_not_a_failure_of_the_database(tmp_path: Path) -> None:
    orig = psycopg.errors.lookup("23505")("duplicate key value violates unique constraint")
    assert database_failure(_wrapped(orig), WHERE) is None
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    engine.dispose()
    exc = _sqlalchemy_error(url, "INSERT INTO t VALUES (1)")
    assert isinstance(exc, sa.exc.IntegrityError)
    assert database_failure(exc, url) is None


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError._SSL,
    ],
)
def test_kafka_authentication_and_authorization_are_permanent(code: int) -> None:
    failure = broker_failure(KafkaError(code), "broker:9093")
    assert isinstance(failure, BrokerAccessError)
    assert not isinstance(failure, RetriableError)
    assert "Kafka at broker:9093" in str(failure)


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
    ],
)
def test_kafka_transport_errors_and_leader_changes_are_transient(code: int) -> None:
    failure = broker_failure(KafkaError(code), "broker:9092")
    assert isinstance(failure, BrokerUnavailableError)
    assert "Kafka at broker:9092 is unreachable" in str(failure)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(failure)


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (KafkaError.INVALID_REPLICATION_FACTOR, "set replication_factor to at most the number"),
        (KafkaError.INVALID_PARTITIONS, "set partitions to 1 or more"),
        (KafkaError.INVALID_CONFIG, "the broker rejects a topic setting"),
        (KafkaError.POLICY_VIOLATION, "the broker's topic policy refuses this request"),
        (KafkaError.TOPIC_EXCEPTION, "fix topic_prefix"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "grant the ACLs"),
        (KafkaError.INVALID_TRANSACTION_TIMEOUT, "transaction.max.timeout.ms"),
        (KafkaError.INVALID_SESSION_TIMEOUT, "session_timeout_ms"),
        (KafkaError.UNSUPPORTED_SASL_MECHANISM, "check sasl.mechanism"),
    ],
)
def test_kafka_refusals_of_a_topic_or_admin_request_are_permanent(code: int, advice: str) -> None:
    error = KafkaError(code, "the broker's own words")
    failure = broker_failure(error, "broker:9092", "create topic exigo.orders")
    assert isinstance(failure, BrokerAccessError)
    assert not isinstance(failure, RetriableError)
    assert str(failure).startswith(
        "Kafka at broker:9092: cannot create topic exigo.orders: the broker's own words; "
    )
    assert advice in str(failure)


def test_a_transient_kafka_error_says_what_was_being_done_and_unreachable_only_if_so() -> None:
    doing = "read the offsets of consumer group g"
    moved = broker_failure(KafkaError(KafkaError.NOT_COORDINATOR), "broker:9092", doing)
    assert isinstance(moved, BrokerUnavailableError)
    assert "unreachable" not in str(moved)
    assert str(moved).startswith(f"Kafka at broker:9092: could not {doing} (")
    down = broker_failure(KafkaError(KafkaError._TRANSPORT), "broker:9092", doing)
    assert isinstance(down, BrokerUnavailableError)
    assert str(down).startswith(f"Kafka at broker:9092 is unreachable: could not {doing} (")
    unnamed = broker_failure(KafkaError(KafkaError.LEADER_NOT_AVAILABLE), None, doing)
    assert str(unnamed).startswith(f"Kafka: could not {doing} (")


class _Admin:
    """An AdminClient stand-in whose create_topics answers each topic with ``error``."""

    def __init__(self, error: KafkaError | None) -> None:
        self.error = error

    def create_topics(self, topics: list[NewTopic], **_: object) -> dict[str, Future[None]]:
        futures: dict[str, Future[None]] = {}
        for topic in topics:
            future: Future[None] = Future()
            if self.error is None:
                future.set_result(None)
            else:
                future.set_exception(KafkaException(self.error))
            futures[topic.topic] = future
        return futures


def test_a_topic_the_broker_refuses_to_create_stops_with_what_to_set() -> None:
    reason = "Unable to replicate the partition 3 time(s): only 1 broker(s) are registered."
    admin: Any = _Admin(KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, reason))
    with pytest.raises(BrokerAccessError) as caught:
        create_topics(admin, [NewTopic("exigo.orders", 1, 3)], "broker:9092")
    assert str(caught.value) == (
        f"Kafka at broker:9092: cannot create topic exigo.orders: {reason}; set "
        "replication_factor to at most the number of brokers"
    )
    exists: Any = _Admin(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS))
    create_topics(exists, [NewTopic("exigo.orders", 1, 1)], "broker:9092")
    busy: Any = _Admin(KafkaError(KafkaError.REQUEST_TIMED_OUT))
    with pytest.raises(BrokerUnavailableError, match=r"could not create topic exigo\.orders"):
        create_topics(busy, [NewTopic("exigo.orders", 1, 1)], "broker:9092")


class _Producer:
    """A Producer stand-in whose init_transactions raises ``error``."""

    def __init__(self, error: KafkaError) -> None:
        self.error = error

    def init_transactions(self, _timeout: float) -> None:
        raise KafkaException(self.error)


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (KafkaError.INVALID_TRANSACTION_TIMEOUT, BrokerAccessError, "lower it"),
        (KafkaError.PRODUCER_FENCED, FencedError, "took over"),
        (KafkaError._TRANSPORT, BrokerUnavailableError, "watermark did not move"),
    ],
)
def test_the_publisher_classifies_what_the_broker_answers(
    code: int, kind: type[Exception], says: str
) -> None:
    producer: Any = _Producer(KafkaError(code))
    with pytest.raises(kind, match=says):
        TransactionalPublisher(load_settings(None), producer)


def test_a_malformed_toml_file_is_named_with_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "queuestream.toml"
    config.write_text('topic_prefix = "shop"\nkafka_bootstrap_servers = \n')
    with pytest.raises(SettingsFileError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert str(config) in message
    assert "line 2, column" in message
    assert isinstance(caught.value.__context__, tomllib.TOMLDecodeError)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("source_url", "postgresql://app:hunter2@db:notaport/sync", "not a database URL"),
        ("target_url", "mysql://app:hunter2@db/t", "unsupported database 'mysql'"),
        ("kafka_bootstrap_servers", "broker one:9092", "bad server 'broker one:9092'"),
        ("kafka_bootstrap_servers", "a:9092,,b:9092", "bad server ''"),
        ("kafka_bootstrap_servers", "127.0.0.1:99999", "bad server '127.0.0.1:99999'"),
        ("kafka_bootstrap_servers", "a:9092,http://b:9092", "bad server 'http://b:9092'"),
    ],
)
def test_malformed_urls_and_servers_are_settings_errors(
    setting: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None, **{setting: value})
    message = str(caught.value)
    assert f"{setting}: " in message
    assert says in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "servers", ["127.0.0.1:9092", "a:1,b:2", "SASL_SSL://kafka.example:9093", "[::1]:9092", "kafka"]
)
def test_wellformed_bootstrap_servers_pass(servers: str) -> None:
    assert load_settings(None, kafka_bootstrap_servers=servers).kafka_bootstrap_servers == servers


def test_a_driver_error_that_escaped_unclassified_is_classified_by_the_command(
    tmp_path: Path,
) -> None:
    exc = _sqlalchemy_error(f"sqlite:///{tmp_path}")
    assert isinstance(escaped_failure(exc), DatabaseAccessError)
    kafka = KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED))
    assert isinstance(escaped_failure(kafka), BrokerAccessError)
    assert escaped_failure(ValueError("a bug")) is None


def test_a_consumer_target_that_cannot_work_is_not_an_outage(tmp_path: Path) -> None:
    """consumers.target_db raises what the classification says: never retried for good."""
    from consumers.accounting import AccountingTarget
    from consumers.target_db import is_outage, prepare, retriable_outages

    engine = create_engine(f"sqlite:///{tmp_path}", writer=True)
    with pytest.raises(DatabaseAccessError, match="not a folder itself"):
        prepare(engine, AccountingTarget())
    engine.dispose()
    url = f"sqlite:///{tmp_path / 'target.db'}"
    engine = create_engine(url, writer=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with pytest.raises(sa.exc.IntegrityError) as refused:  # the data: passes as it is
        with retriable_outages(engine), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert not is_outage(refused.value)
    engine.dispose()


@pytest.mark.parametrize(
    ("error", "quiet"),
    [
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.OperationalError("consuming input failed: server closed the connection"), True),
        (psycopg.errors.InFailedSqlTransaction("current transaction is aborted"), False),
        (psycopg.errors.InsufficientPrivilege("permission denied for table t"), False),
        (ValueError("a bug in a cleanup hook"), False),
    ],
)
def test_only_the_cleanup_of_a_lost_postgresql_connection_is_quiet(
    caplog: pytest.LogCaptureFixture, error: Exception, quiet: bool
) -> None:
    """SQLAlchemy logs a failed cursor close through the pool's logger with a traceback;
    a lost connection's becomes one DEBUG line, any other error stays as it was."""
    engine = create_engine("postgresql://app@127.0.0.1:1/sync")  # never connects
    try:
        with caplog.at_level(logging.DEBUG):
            engine.pool.logger.error(
                "Error closing cursor", exc_info=(type(error), error, error.__traceback__)
            )
    finally:
        engine.dispose()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    debug = [r for r in caplog.records if r.name == "queuestream.databases"]
    if quiet:
        assert not errors
        assert [r.levelno for r in debug] == [logging.DEBUG]
        assert debug[0].getMessage().startswith("Error closing cursor of a lost connection (")
        assert debug[0].exc_info is None
    else:
        assert [r.getMessage() for r in errors] == ["Error closing cursor"]
        assert errors[0].exc_info is not None
        assert not debug


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        (
            SchemaRegistryError(503, -1, "<html>busy</html>"),
            RetriableError,
            "is unreachable (HTTP 503",
        ),
        (SchemaRegistryError(500, 50001, "store error"), RetriableError, "(HTTP 500: store error)"),
        (
            SchemaRegistryError(404, 404, "HTTP 404 Not Found"),
            ConfigurationError,
            "fix schema_registry",
        ),
        (SchemaRegistryError(403, 40301, "forbidden"), ConfigurationError, "give this user access"),
        (
            SchemaRegistryError(409, 409, "incompatible schema"),
            SchemaError,
            "compatibility setting",
        ),
        (SchemaRegistryError(422, 42201, "invalid schema"), SchemaError, "compatibility setting"),
    ],
)
def test_registry_answers_by_http_status(
    error: Exception, kind: type[Exception], says: str
) -> None:
    failure = registry_failure(error, "http://qs:***@registry:8081")
    assert isinstance(failure, kind)
    assert str(failure).startswith("schema registry at http://qs:***@registry:8081 ")
    assert says in str(failure)
    assert "<html>" not in str(failure)


def test_what_is_not_a_registry_failure_is_left_to_the_caller() -> None:
    assert registry_failure(KeyError("id"), "http://registry:8081") is None
    unknown_id = SchemaRegistryError(404, 40403, "No content with id 'contentId-7' was found.")
    assert registry_failure(unknown_id, "http://registry:8081") is None  # the registry's answer


def test_passwords_in_urls_are_hidden_wherever_they_are_in_a_text() -> None:
    text = 'POST http://qs:hunter2@registry:8081/subjects "200", then https://a:b%40c@h/x'
    assert (
        hide_logins(text)
        == 'POST http://qs:***@registry:8081/subjects "200", then https://a:***@h/x'
    )


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--group", "nobody", "--to-earliest"],
        ["monitor", "--once"],
        ["monitor", "--check", "--max-lag", "10"],
    ],
)
def test_an_unreachable_broker_stops_replay_and_monitor_within_broker_timeout_seconds(
    args: list[str],
) -> None:
    # They waited a fixed 15 s while logging "waiting up to 1s (broker_timeout_seconds)".
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUESTREAM_")}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    env |= {"QUEUESTREAM_BROKER_TIMEOUT_SECONDS": "1"}
    started = time.monotonic()
    done = run_cli(args, env, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "BrokerUnavailableError: Kafka at 127.0.0.1:" in done.stderr, done.stderr
    assert elapsed < 10, f"stopped after {elapsed:.1f}s"
