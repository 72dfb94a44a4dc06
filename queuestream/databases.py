"""SQLAlchemy engines for the sync database and the targets (SQLite or PostgreSQL), and
for a sync database on SQL Server (read only: :mod:`queuestream.sqlserver`).

SQLite engines run in WAL mode and start every transaction with an explicit
BEGIN, so that a read transaction is a real snapshot (pysqlite otherwise opens
transactions only before writes). Engines that write (``writer=True``) begin
with BEGIN IMMEDIATE: the write lock is taken first, so a writer never fails to
upgrade a stale read (SQLITE_BUSY_SNAPSHOT ignores busy_timeout), and the
timestamps it takes inside its transaction are close to its commit. A statement
waits up to 30 s for another connection's lock (the URL's ``?timeout=SECONDS``,
as for sqlite3.connect, sets another wait).

Every PostgreSQL session plans each statement for the tables as they are when it
runs (``plan_cache_mode = force_custom_plan``, where the server has the setting:
PostgreSQL 12 on). psycopg prepares a statement on its fifth run, and PostgreSQL
then settles on one generic plan, made for the tables as they were and kept until
an ANALYZE of one of them. The tables queuestream writes grow from nothing while
one process runs: a new target or a rebuild applying its first refreshes, the
simulator filling a source. The generic plans made on them while they were small
were sequential scans hashed against the batch's keys (the accounting consumer's
invoice balances read every payment, the simulator's updates every customer),
kept while the tables grew a hundredfold within a minute, because autovacuum had
not yet analyzed a database just made. Planning each run costs little beside what
the statements do, as they are few and set-based: the consumers' apply, the sweep
and a refresh measured no slower with it (``make bench-consumers``,
``bench-sweep``, ``bench-freshness``).

A PostgreSQL connection lost under an open server-side cursor (the source
restarted while the producer streams rows with ``yield_per``) fails again when
SQLAlchemy cleans it up: closing the cursor sends CLOSE to a server that is gone,
and SQLAlchemy logs that at ERROR with a traceback through the pool's logger
("Error closing cursor"; likewise a failed reset or close of the connection). The
outage itself is logged once per attempt by :mod:`queuestream.retry`, so
:class:`_LostConnectionCleanup` turns such a record into one DEBUG line when the
error is the connection being lost, as :func:`queuestream.failures.database_failure`
classifies it; any other error in the cleanup is logged as SQLAlchemy logs it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from queuestream.errors import ConfigurationError, DatabaseUnavailableError, QueuestreamError
from queuestream.failures import database_failure, database_unreachable, hide_logins
from queuestream.sqlserver import create_sqlserver_engine

__all__ = [
    "check_url",
    "create_engine",
    "describe_url",
    "driver_errors",
    "is_outage",
    "is_postgres",
    "parse_url",
    "postgresql_scheme",
    "retriable_outages",
    "setting_where_known",
    "transaction_note",
    "unavailable",
]

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a statement waits for another connection's lock
#: libpq's other scheme (postgres://), which SQLAlchemy no longer takes.
_POSTGRES_ALIAS = re.compile(r"^postgres(?=[+:])", re.IGNORECASE)


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


def transaction_note(connection: sa.Connection, name: str) -> set[Any] | None:
    """A set kept for the transaction open on ``connection`` under ``name``: what earlier
    statements of the same transaction noted for later ones. A new transaction starts
    an empty one. None when no transaction is open (nothing to note it for)."""
    transaction = connection.get_transaction()
    if transaction is None:
        return None
    held = connection.info.get(name)
    if held is None or held[0] is not transaction:
        held = (transaction, set())
        connection.info[name] = held
    note: set[Any] = held[1]
    return note


def describe_url(url: str | sa.URL) -> str:
    """The URL without its password, for messages (nor a password given as a query
    option, ``?password=`` or ``?sslpassword=``)."""
    parsed = make_url(url)
    hidden = {k: "***" for k in parsed.query if "password" in k.lower()}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True)


def postgresql_scheme(url: str) -> str:
    """``url`` with libpq's ``postgres://`` spelled ``postgresql://``, as SQLAlchemy
    takes it (libpq, psql and most hosting providers give either)."""
    return _POSTGRES_ALIAS.sub("postgresql", url)


def parse_url(url: str) -> sa.URL:
    """``url`` parsed and checked (:func:`check_url`), for a command to refuse a bad URL
    before anything connects. Raises ConfigurationError, without the password."""
    try:
        parsed = make_url(postgresql_scheme(url))
    except (sa.exc.ArgumentError, ValueError):
        msg = (
            f"invalid database URL {hide_logins(url)!r}: use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
        raise ConfigurationError(msg) from None
    check_url(parsed)
    return parsed


def check_url(url: sa.URL) -> None:
    """Refuse what no database could accept in ``url`` before anything connects: a
    SQLite URL with two slashes (SQLAlchemy's own error is a traceback), a port outside
    1-65535 and a PostgreSQL connection option that libpq rejects (it says so only when
    asked to connect, which a retry loop would take for an outage).

    Raises ConfigurationError naming the URL without its password.
    """
    backend = url.get_backend_name()
    if backend == "sqlite" and (url.host or url.username or url.password or url.port):
        path = "/".join(part for part in (url.host, url.database) if part) or "PATH"
        msg = (
            f"{describe_url(url)}: a SQLite URL has three slashes before a relative path "
            f"(sqlite:///{path}) and four before an absolute one (sqlite:////data/x.db)"
        )
        raise ConfigurationError(msg)
    if backend == "postgresql":
        problem = _postgres_problem(url)
        if problem is not None:
            msg = f"{describe_url(url)}: {problem}"
            raise ConfigurationError(msg)


#: libpq's connection options that take one of a few words, and those words.
_POSTGRES_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "load_balance_hosts": ("disable", "random"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
}
#: libpq's connection options that take a whole number.
_POSTGRES_INTEGERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def _postgres_problem(url: sa.URL) -> str | None:
    """What libpq would refuse in ``url`` when connecting, checked without connecting:
    the port, the names of the query's options (psycopg's own parser, as libpq knows
    them) and the values of the options that take a word or a number. None: nothing.
    Option values are named only for options that cannot hold a secret."""
    from psycopg import ProgrammingError  # here: the settings check URLs at every start
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    ports: list[str] = [] if url.port is None else [str(url.port)]
    options: dict[str, str] = {}
    for name, given in url.query.items():
        values = [given] if isinstance(given, str) else list(given)
        if name == "host":  # SQLAlchemy's multi-host form, ?host=HOST:PORT&host=...
            ports += [v.rpartition(":")[2] for v in values if ":" in v.lstrip("[")]
            continue
        if name == "port":
            ports += [p for v in values for p in v.split(",")]
            continue
        options[name] = ",".join(values)
    for port in ports:
        if not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            return f"port {port!r} is not a port number: give one from 1 to 65535"
    try:
        conninfo_to_dict(make_conninfo("", **options))
    except ProgrammingError as exc:
        reason = str(exc).strip().partition("\n")[0]
        return (
            f"{reason}: fix or remove it (PostgreSQL's documentation lists libpq's "
            "connection parameters)"
        )
    for name, choices in _POSTGRES_CHOICES.items():
        if name in options and options[name] not in choices:
            return (
                f"{name} {options[name]!r} is not one of {', '.join(choices)}: "
                f"fix ?{name}= in the URL"
            )
    for name in _POSTGRES_INTEGERS:
        if name in options and not options[name].strip().lstrip("-").isdigit():
            return f"{name} {options[name]!r} is not a whole number: fix ?{name}= in the URL"
    return None


def create_engine(
    url: str,
    *,
    writer: bool = False,
    existing: str | None = None,
    absent: str = "check the path (a database this command reads is never created)",
    **kwargs: Any,
) -> sa.Engine:
    """An engine for ``url``; creates a SQLite file's folder if needed.

    ``existing`` names a database the command only reads or expects to be there ("the
    sync database"): a SQLite file that does not exist is then a ConfigurationError
    saying ``absent`` (what to do), where SQLite would create an empty one (and the
    command would blame a missing table).
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        file = _sqlite_file(parsed)
        if file is not None and existing is not None and not file.exists():
            msg = f"no such file: {file} ({existing} {describe_url(parsed)}): {absent}"
            raise ConfigurationError(msg)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        timeout = _busy_timeout(parsed)
        engine = sa.create_engine(parsed, connect_args={"timeout": timeout}, **kwargs)
        _sqlite_snapshot_transactions(engine, "BEGIN IMMEDIATE" if writer else "BEGIN", timeout)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(parsed, pool_pre_ping=True, **kwargs)
        _quiet_lost_connection_cleanup(engine)
        _plans_for_the_tables_as_they_are(engine)
        return engine
    if backend == "mssql":
        return create_sqlserver_engine(parsed, writer=writer, **kwargs)
    msg = (
        f"unsupported database {backend!r} in {describe_url(parsed)}: use sqlite:///, "
        "postgresql:// or (a source only) mssql://"
    )
    raise ConfigurationError(msg)


def _sqlite_file(url: sa.URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or a ``file:`` URI
    (``?uri=true``), whose path SQLite reads itself."""
    if not url.database or url.database == ":memory:":
        return None
    if str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(url.database)


def _busy_timeout(url: sa.URL) -> float:
    value = url.query.get("timeout")
    if value is None:
        return SQLITE_BUSY_TIMEOUT
    try:
        return float(value if isinstance(value, str) else value[-1])
    except ValueError:
        msg = f"invalid timeout {value!r} in {describe_url(url)}: give seconds, e.g. ?timeout=5"
        raise ConfigurationError(msg) from None


def _sqlite_snapshot_transactions(engine: sa.Engine, begin: str, timeout: float) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        # Text that is not UTF-8 reads as lone surrogates instead of failing the whole
        # query, so the codec can name the table, key and column that hold it.
        dbapi_connection.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql(begin)


def setting_where_known(name: str, value: str, *, local: bool) -> str:
    """SQL that sets PostgreSQL's ``name`` to ``value``, for the transaction (``local``)
    or the session, and does nothing on a server that lacks the setting."""
    return (
        f"SELECT set_config('{name}', '{value}', {'true' if local else 'false'}) "
        f"WHERE current_setting('{name}', true) IS NOT NULL"
    )


#: Session-wide; skipped on a server without the setting (before PostgreSQL 12).
_CUSTOM_PLANS = setting_where_known("plan_cache_mode", "force_custom_plan", local=False)


def _plans_for_the_tables_as_they_are(engine: sa.Engine) -> None:
    """Each new session of ``engine`` plans every statement as it runs (see the module's
    note): committed, so that it outlives the transaction it was set in."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_CUSTOM_PLANS)
        dbapi_connection.commit()


class _LostConnectionCleanup(logging.Filter):
    """A filter for a pool's logger: the cleanup of a lost PostgreSQL connection failing
    becomes one DEBUG line of this module instead of an ERROR with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not type(exc).__module__.startswith("psycopg"):
            return True
        failure = database_failure(exc, "")
        if not isinstance(failure, DatabaseUnavailableError):
            return True  # not the connection going away: a real error, logged as it was
        reason = str(exc).strip().partition("\n")[0] or type(exc).__name__
        log.debug("%s of a lost connection (%s): discarded", record.getMessage(), reason)
        return False


_LOST_CONNECTION_CLEANUP = _LostConnectionCleanup()


def _quiet_lost_connection_cleanup(engine: sa.Engine) -> None:
    """Install :class:`_LostConnectionCleanup` on the logger of ``engine``'s pool (one
    logger per pool class, shared by every engine with that class; added once)."""
    logger = engine.pool.logger
    target = getattr(logger, "logger", logger)  # an echo_pool engine wraps the logger
    if isinstance(target, logging.Logger):
        target.addFilter(_LOST_CONNECTION_CLEANUP)


def unavailable(exc: sa.exc.DBAPIError, engine: sa.Engine) -> QueuestreamError:
    """The error for a failure of ``engine``'s database, classified by
    :func:`queuestream.failures.database_failure`: DatabaseUnavailableError (retry) when
    it may come back, DatabaseAccessError (stop) when it cannot work as configured.
    A failure that is neither (the database refused the data) counts as unavailable,
    as every caller has always treated it."""
    where = describe_url(engine.url)
    return database_failure(exc, where) or database_unreachable(where, exc)


def is_outage(exc: sa.exc.DBAPIError) -> bool:
    """Is ``exc`` the database failing us, for now or for good (rather than refusing the
    data)? See :func:`queuestream.failures.database_failure`."""
    return database_failure(exc, "") is not None


@contextmanager
def driver_errors(conn: sa.Connection, statement: str) -> Iterator[None]:
    """The driver's own errors (from its cursor, used without SQLAlchemy) raised as
    SQLAlchemy raises them, so that :func:`retriable_outages` knows them."""
    error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, error) from exc


@contextmanager
def retriable_outages(engine: sa.Engine) -> Iterator[None]:
    """Raise failures of ``engine``'s database as DatabaseUnavailableError (an outage) or
    DatabaseAccessError (for good); the database refusing the data passes as it is."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        failure = database_failure(exc, describe_url(engine.url))
        if failure is not None:
            raise failure from exc
        raise
