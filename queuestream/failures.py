"""Which failures are worth waiting out and which stop a command at once: decided here only.

A failure of a database or of the broker is either *transient* (connection
refused or reset, a timeout, the server starting or shutting down, a lock held
by another SQLite connection, a Kafka transport error or leader change) or
*permanent* (authentication failed, the database or a table missing, permission
denied, a SQLite path that cannot be opened, a setting the client rejects (a
connection option libpq refuses before connecting, such as an unknown sslmode), a topic
the broker refuses to create as asked, such as a replication factor above its
number of brokers).
Transient failures become :class:`~queuestream.errors.RetriableError` subclasses,
which every retry loop (:mod:`queuestream.retry`) waits out; permanent ones become
:class:`~queuestream.errors.ConfigurationError` subclasses, which no loop retries,
so every command stops with one line that says what is wrong and what to do.

The codes decide wherever the driver gives one: PostgreSQL's SQLSTATE (psycopg's
``sqlstate``, reached through SQLAlchemy's ``exc.orig``), SQL Server's ODBC SQLSTATE
(pyodbc's first argument; mssql-python keeps only the standard's words for it, from
which it is found back: it raises OperationalError for a wrong password as for a lost
server), SQLite's result code (``sqlite_errorname``), librdkafka's error code and the
schema registry's HTTP status. Two places give no code, and there the message is
read: libpq reports a failed connection attempt (wrong password, database missing, a
connection option it refuses) as text only, and SQLite reports a missing table as a
generic SQLITE_ERROR.

Anything else a database raises is the database refusing the data (a constraint, a
value that does not fit): :func:`database_failure` returns None for it, and the
caller decides (the consumer isolates the events that cause it).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from confluent_kafka import KafkaError

from queuestream.errors import (
    BrokerAccessError,
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseAccessError,
    DatabaseUnavailableError,
    QueuestreamError,
    RetriableError,
    SchemaError,
)

__all__ = [
    "broker_failure",
    "database_failure",
    "database_unreachable",
    "escaped_failure",
    "hide_logins",
    "registry_failure",
    "sqlstate_of",
]

#: SQLSTATEs (or their two-letter classes) of a server that may come back; the ODBC
#: ones (SQL Server) are HYT00/HYT01, a timeout, and 40001, a deadlock victim or a
#: snapshot that conflicts with a concurrent update.
_TRANSIENT_SQLSTATES = (
    "08",
    "57P01",
    "57P02",
    "57P03",
    "53300",
    "55P03",
    "HYT00",
    "HYT01",
)
#: A deadlock or a serialization failure: the database is there, a concurrent
#: transaction (a member of the same group) was in the way.
_CONCURRENCY_SQLSTATES = ("40001", "40P01")

#: SQLSTATEs that no retry can fix, with what to do about them.
_PERMANENT_SQLSTATES = {
    "28P01": "authentication failed: check the user name and password in the URL",
    "28000": "the server refuses this user from here: check the user name and pg_hba.conf",
    "3D000": "the database does not exist: create it or fix the database name in the URL",
    "42P01": "a table is missing: create it, or point the URL at the right database",
    "3F000": "a schema is missing: create it, or fix the schema setting",
    "42501": "permission denied: GRANT this user the privileges it needs",
    "42703": "a column is missing: the database's tables do not match what this version "
    "reads or writes; point the URL at the right database",
    "42704": "an object is missing: check the database the URL names",
    # ODBC's (SQL Server through mssql-python or pyodbc)
    "42S02": "a table is missing: create it, or point the URL at the right database",
    "42S22": "a column is missing: the database's tables do not match what this version "
    "reads; point the URL at the right database",
    "42000": "SQL Server refuses the statement or this login's access (the message says "
    "which): GRANT the permissions it names, fix the database name in the URL, or create "
    "the procedure it names",
    "IM002": "the ODBC driver the URL names is not installed: install it, or use "
    "mssql+mssqlpython:// (pip install 'queuestream[mssql]'), which brings its own",
}
#: SQL Server reports a failed login with 28000 like PostgreSQL, in its own words.
_ODBC_LOGIN = "28000"

#: libpq gives no SQLSTATE for a failed connection attempt; the server's message says it.
_CONNECT_MESSAGES = (
    (re.compile(r"the database system is (starting up|in recovery mode)"), "57P03"),
    (re.compile(r"the database system is shutting down"), "57P01"),
    (re.compile(r"password authentication failed"), "28P01"),
    (
        re.compile(r"no pg_hba\.conf entry|is not permitted to log in|role \".*\" does not exist"),
        "28000",
    ),
    (re.compile(r"database \".*\" does not exist"), "3D000"),
    (re.compile(r"permission denied for database"), "42501"),
)

#: libpq's (and psycopg's) words for a connection option it refuses before trying to
#: connect: a port outside 1-65535, a word sslmode does not know, an option that does not
#: exist, a malformed conninfo. They come as a failed connection, with no SQLSTATE.
_BAD_CONNECTION_OPTION = re.compile(
    r"invalid (connection option|port number|integer value|[\w.]+ value)\b"
    r"|bad value for \w+:"
    r"|missing \"=\" after"
    r"|unterminated quoted string in connection info"
    r"|could not match \d+ port numbers to \d+ hosts"
)
_BAD_CONNECTION_OPTION_ADVICE = (
    "a connection option in the URL is invalid: fix the URL (PostgreSQL's documentation "
    "lists libpq's connection parameters and their values)"
)

#: SQLite result codes (sqlite3's ``sqlite_errorname``) that no retry can fix.
_SQLITE_PERMANENT = {
    "SQLITE_CANTOPEN": "the database file cannot be opened: the path must name a file in a "
    "folder this user may write (not a folder itself)",
    "SQLITE_NOTADB": "the file is not a SQLite database: fix the path",
    "SQLITE_READONLY": "the database file is read-only: give this user write access",
    "SQLITE_PERM": "permission denied: give this user access to the file",
    "SQLITE_AUTH": "authorization denied: check the file's access rules",
    "SQLITE_CORRUPT": "the database file is corrupt: restore it from a backup",
}


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of ``exc`` or of the driver error SQLAlchemy wraps: psycopg's, pyodbc's
    (its first argument), or mssql-python's (which keeps only the standard's words
    for it, ``driver_error``: the code is found back from them)."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state:
        return state
    module = type(orig).__module__
    if module.startswith("mssql_python"):
        return _mssql_python_states().get(str(getattr(orig, "driver_error", "")))
    if module.startswith("pyodbc") and orig.args and _ODBC_STATE.fullmatch(str(orig.args[0])):
        return str(orig.args[0])
    if type(orig).__module__.startswith("psycopg") and _is_connect_failure(orig):
        text = str(orig)
        for pattern, code in _CONNECT_MESSAGES:
            if pattern.search(text):
                return code
        return "08001"  # could not establish the connection: refused, timed out, no route
    return None


_ODBC_STATE = re.compile(r"[0-9A-Z]{5}")
#: The ODBC SQLSTATEs that decide something here, whose words mssql-python gives.
_ODBC_STATES = (
    _ODBC_LOGIN,
    *(s for s in _PERMANENT_SQLSTATES if s.startswith(("42S", "42000", "IM"))),
    "08001",
    "08002",
    "08003",
    "08004",
    "08007",
    "08S01",
    "40001",
    "HYT00",
    "HYT01",
)


@functools.cache
def _mssql_python_states() -> dict[str, str]:
    """mssql-python's words for each SQLSTATE above -> the SQLSTATE, from its own table
    (``sqlstate_to_exception``), so that its wording can change with it."""
    try:
        from mssql_python.exceptions import sqlstate_to_exception
    except ImportError:
        return {}
    found: dict[str, str] = {}
    for state in _ODBC_STATES:
        made = sqlstate_to_exception(state, "")
        words = getattr(made, "driver_error", None)
        if isinstance(words, str) and words not in found:
            found[words] = state
    return found


def _is_odbc(orig: BaseException) -> bool:
    return type(orig).__module__.startswith(("mssql_python", "pyodbc"))


def _is_connect_failure(orig: BaseException) -> bool:
    return getattr(orig, "pgconn", None) is not None or str(orig).startswith(
        ("connection failed", "connection is bad")
    )


def database_failure(exc: BaseException, where: str) -> QueuestreamError | None:
    """What ``exc`` from the database ``where`` (a URL without password) means.

    DatabaseUnavailableError: wait and retry. DatabaseAccessError: stop, the message
    says what to fix. None: the database refused the data, not the connection.
    """
    orig: Any = getattr(exc, "orig", None) or exc
    reason = _reason(exc)
    if _bad_connection_option(orig):
        return _access(where, reason, _BAD_CONNECTION_OPTION_ADVICE)
    state = sqlstate_of(exc)
    if state is not None:
        if state == _ODBC_LOGIN and _is_odbc(orig):
            return _access(where, reason, "login failed: check the user name and password")
        if state in _PERMANENT_SQLSTATES:
            return _access(where, reason, _PERMANENT_SQLSTATES[state])
        if state in _CONCURRENCY_SQLSTATES:
            return DatabaseUnavailableError(
                f"database {where} rolled the transaction back ({reason}): another "
                "transaction held the same rows; nothing was committed, and a retry starts it over"
            )
        if state.startswith(_TRANSIENT_SQLSTATES):
            return _unavailable(where, reason)
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        if name in _SQLITE_PERMANENT:
            return _access(where, reason, _SQLITE_PERMANENT[name])
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR")):
            return _unavailable(where, reason)
        if reason.startswith("no such table"):
            return _access(where, reason, _PERMANENT_SQLSTATES["42P01"])
        if reason.startswith("no such column") or " has no column named " in reason:
            return _access(where, reason, _PERMANENT_SQLSTATES["42703"])
    if _connection_lost(exc):
        return _unavailable(where, reason)
    return None


def _bad_connection_option(orig: BaseException) -> bool:
    """Did psycopg (libpq) refuse a connection option before trying to connect? Such an
    error has no SQLSTATE (the server never spoke) and libpq's words for it."""
    if not type(orig).__module__.startswith("psycopg") or getattr(orig, "sqlstate", None):
        return False
    return _BAD_CONNECTION_OPTION.search(str(orig)) is not None


def _connection_lost(exc: BaseException) -> bool:
    """What the DB-API calls an operational or interface error (the connection, the
    server's resources) and SQLAlchemy an invalidated connection: waited out, as
    every outage, unless a code above said it is permanent."""
    if bool(getattr(exc, "connection_invalidated", False)):
        return True
    return type(exc).__name__ in ("OperationalError", "InterfaceError")


def database_unreachable(where: str, exc: BaseException) -> DatabaseUnavailableError:
    """``exc`` as the database ``where`` being unreachable, whatever it was."""
    return _unavailable(where, _reason(exc))


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    # mssql-python: "Driver Error: <the standard's words>; DDBC Error: [Microsoft][ODBC
    # Driver 18 for SQL Server][SQL Server]<the server's words>": the server's words.
    server_says = _ODBC_VENDORS.sub("", str(getattr(orig, "ddbc_error", "") or "")).strip()
    reason = (server_says or str(orig).strip()).splitlines() or [type(orig).__name__]
    return reason[0].removeprefix("connection failed: ")


_ODBC_VENDORS = re.compile(r"^(\[[^\]]*\])+")


def _unavailable(where: str, reason: str) -> DatabaseUnavailableError:
    msg = (
        f"database {where} is unreachable ({reason}); nothing was committed, retry when it is back"
    )
    return DatabaseUnavailableError(msg)


def _access(where: str, reason: str, advice: str) -> DatabaseAccessError:
    return DatabaseAccessError(f"database {where}: {reason}; {advice}")


#: librdkafka codes that no retry can fix, with what to do about them: the client's
#: credentials and options, then what the broker refuses in a topic or admin request.
_KAFKA_PERMANENT = {
    KafkaError._AUTHENTICATION: "authentication failed: check sasl.username and sasl.password",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication failed: check sasl.username and "
    "sasl.password",
    KafkaError.UNSUPPORTED_SASL_MECHANISM: "the broker does not offer this SASL mechanism: "
    "check sasl.mechanism",
    KafkaError._SSL: "the TLS handshake failed: check ssl.ca.location and the certificates",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not authorized for a topic: grant the ACLs",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "not authorized for the group: grant the ACLs",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "not authorized on the cluster: grant the ACLs",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "not authorized for the transactional "
    "id: grant the ACLs",
    KafkaError._INVALID_ARG: "a Kafka option is invalid: fix the kafka settings",
    KafkaError._UNKNOWN_PROTOCOL: "the broker speaks another protocol: check "
    "security.protocol and the bootstrap port",
    KafkaError.INVALID_REPLICATION_FACTOR: "set replication_factor to at most the number of "
    "brokers",
    KafkaError.INVALID_PARTITIONS: "set partitions to 1 or more",
    KafkaError.INVALID_CONFIG: "the broker rejects a topic setting: fix retention_ms or the "
    "broker's limits",
    KafkaError.POLICY_VIOLATION: "the broker's topic policy refuses this request: create the "
    "topics by hand or ask the cluster's operator to allow it",
    KafkaError.TOPIC_EXCEPTION: "the topic name is invalid: fix topic_prefix (letters, digits, "
    "'.', '_' and '-')",
    KafkaError.INVALID_TRANSACTION_TIMEOUT: "transaction.timeout.ms is above the broker's "
    "transaction.max.timeout.ms: lower it",
    KafkaError.INVALID_SESSION_TIMEOUT: "session_timeout_ms is outside the broker's "
    "group.min.session.timeout.ms and group.max.session.timeout.ms: set it between them",
    KafkaError.UNSUPPORTED_VERSION: "the broker is too old for this request: upgrade it",
    KafkaError.SECURITY_DISABLED: "security is disabled on the broker: use a listener that "
    "has it, or drop the security options",
}

#: librdkafka codes meaning no broker answered: the broker is down or the address wrong.
_KAFKA_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


def broker_failure(
    error: KafkaError, where: str | None, doing: str | None = None
) -> QueuestreamError:
    """What a librdkafka ``error`` from Kafka at ``where`` means, while ``doing`` something.

    ``where`` is the bootstrap servers (None where the caller does not know them);
    ``doing`` says what was being done ("create topic exigo.orders", "read the offsets
    of consumer group g"), so the line says which request failed.

    BrokerAccessError (stop, fix the setting) for authentication, authorization, TLS,
    invalid options and what the broker refuses in a topic or admin request (a
    replication factor above the number of brokers, a policy, an invalid config);
    BrokerUnavailableError (wait and retry) for everything else: "unreachable" for
    transport errors and timeouts, "could not ..." for leader and coordinator changes
    and whatever else may pass. The message does not say the request is tried again:
    a command that runs until stopped does so (its retry says when, and leaves out the
    error's ``advice``), a one-shot command stops (``replay``, ``rebuild``, ``refresh``)
    and the line tells the operator to.
    """
    code = error.code()
    reason = error.str()
    kafka = "Kafka" if where is None else f"Kafka at {where}"
    advice = _KAFKA_PERMANENT.get(code)
    if advice is None and "authentication" in reason.lower() and "SASL" in reason:
        advice = _KAFKA_PERMANENT[KafkaError.SASL_AUTHENTICATION_FAILED]
    if advice is not None:
        failed = f"cannot {doing}: " if doing else ""
        return BrokerAccessError(f"{kafka}: {failed}{reason}; {advice}")
    if code in _KAFKA_UNREACHABLE or doing is None:
        failed = f": could not {doing}" if doing else ""
        return BrokerUnavailableError(
            f"{kafka} is unreachable{failed} ({reason}); start it (make kafka-up) or set "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
    return BrokerUnavailableError(
        f"{kafka}: could not {doing} ({reason}); this passes when the broker has moved a "
        "leader or coordinator",
        advice="retry in a moment",
    )


#: HTTP statuses of a schema registry that may answer later (busy, restarting, or a proxy
#: in front of it that cannot reach it yet).
_REGISTRY_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

#: HTTP statuses of a registry that answers but refuses us for good, with what to do.
_REGISTRY_PERMANENT_STATUS = {
    401: "authentication failed: check the user name and password in schema_registry_url",
    403: "not authorized: give this user access to the registry's subjects",
    404: "this URL is not a Confluent-compatible schema registry API: fix schema_registry_url "
    "(e.g. http://host:8081, or Apicurio's http://host:8080/apis/ccompat/v7)",
    405: "this URL is not a Confluent-compatible schema registry API: fix schema_registry_url",
}


def registry_failure(exc: BaseException, where: str) -> QueuestreamError | None:
    """What ``exc`` from the schema registry at ``where`` (a URL without password) means.

    RetriableError (wait and retry): no answer (connection refused, a timeout) or a
    5xx/429 answer. ConfigurationError (stop): the URL answers but not as a registry
    (404, an HTML page, anything that is not the registry's JSON), or refuses the
    credentials. SchemaError: the registry refuses the schema itself (incompatible with
    the subject's earlier versions, or invalid). None: not a failure of the registry,
    including its own answer that a schema, subject or version does not exist (error
    codes 404xx): for a message framed with an unknown schema id, a DecodeError.
    """
    status = getattr(exc, "http_status_code", None)
    if type(exc).__name__ == "SchemaRegistryError" and isinstance(status, int):
        code = getattr(exc, "error_code", None)
        if status == 404 and isinstance(code, int) and code >= 40400:
            return None  # the registry's own "no such schema (subject, version)": an answer
        said = str(getattr(exc, "error_message", "") or "").strip().partition("\n")[0]
        said = hide_logins(said)
        if code == -1 or not said:  # the answer was not the registry's JSON
            said = "an answer that is not a schema registry's JSON"
        reason = f"HTTP {status}: {said[:200]}"
        if status in _REGISTRY_TRANSIENT_STATUS:
            return _registry_unavailable(where, reason)
        if status in (409, 422):
            msg = (
                f"schema registry at {where} refuses a schema ({reason}): check the subject's "
                "compatibility setting and the schemas registered under it"
            )
            return SchemaError(msg)
        advice = _REGISTRY_PERMANENT_STATUS.get(status)
        if advice is None:
            if code != -1:
                advice = "fix schema_registry_url or the registry"
            else:
                advice = _REGISTRY_PERMANENT_STATUS[404]
        return ConfigurationError(f"schema registry at {where} answered {reason}; {advice}")
    if any(
        cls.__name__ in ("TransportError", "ConnectionError", "Timeout")
        and cls.__module__.startswith(("httpx", "requests"))
        for cls in type(exc).__mro__
    ):
        reason = hide_logins(str(exc).strip().partition("\n")[0]) or type(exc).__name__
        return _registry_unavailable(where, reason)
    if isinstance(exc, ValueError):  # a success status with a body that is not JSON
        msg = (
            f"schema registry at {where} answered with something that is not a schema "
            f"registry's JSON; {_REGISTRY_PERMANENT_STATUS[404]}"
        )
        return ConfigurationError(msg)
    return None


#: The password of a URL in a text: ``scheme://user:password@``.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/:@\s]*):[^/@\s]*@", re.IGNORECASE)


def hide_logins(text: str) -> str:
    """``text`` with the password of every URL in it masked (``scheme://user:***@host``)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _registry_unavailable(where: str, reason: str) -> RetriableError:
    msg = (
        f"schema registry at {where} is unreachable ({reason}); start it or fix "
        "schema_registry_url; nothing was published"
    )
    return RetriableError(msg)


def escaped_failure(exc: BaseException) -> QueuestreamError | None:
    """A database or Kafka error that reached the command unclassified, classified.

    The last line of defence in the CLI: code that meets a driver error wraps it with
    :func:`database_failure` or :func:`broker_failure` where it knows which database or
    broker failed; one that escaped is named generically. None: not a failure of a
    database or the broker (a bug: the CLI shows its traceback).
    """
    module = type(exc).__module__
    if module.startswith("sqlalchemy") and hasattr(exc, "orig"):
        return database_failure(exc, "(this command's database)")
    if module.startswith("confluent_kafka") or type(exc).__name__ == "KafkaException":
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError):
            return broker_failure(error, "(this command's broker)")
    return None
