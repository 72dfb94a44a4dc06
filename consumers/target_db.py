"""The target database as the consumer runtime meets it: made ready, and its failures told apart.

Two kinds of database errors reach the runtime and they call for opposite
answers. An *outage* (connection refused or lost, the server shutting down) says
nothing about the data: nothing was committed, and the runtime waits and retries
(promise 5). Every other database error is the database refusing what it was
given (a constraint, a value that does not fit): retrying cannot help, and batch
apply (:mod:`.batch_apply`) looks for the events that cause it (promise 6).
:func:`is_outage` draws that line once; :func:`retriable_outages` turns outages
into :class:`~queuestream.errors.DatabaseUnavailableError`, the retriable error
every retry loop understands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from consumers import offsets, sync_log
from consumers.target import Target
from queuestream.databases import unavailable

__all__ = ["is_outage", "prepare", "retriable_outages"]

#: PostgreSQL advisory lock that serialises creating the target's tables: members of a
#: group starting together would otherwise collide in the catalog (UniqueViolation).
_SCHEMA_LOCK = 0x71736368656D61  # "qschema"


def is_outage(exc: sa.exc.DBAPIError) -> bool:
    """Is ``exc`` the database being unreachable (rather than refusing the data)?"""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
        exc.connection_invalidated
    )


@contextmanager
def retriable_outages(engine: sa.Engine) -> Iterator[None]:
    """Raise outages of ``engine``'s database as DatabaseUnavailableError; others pass."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if is_outage(exc):
            raise unavailable(exc, engine) from exc
        raise


def prepare(engine: sa.Engine, target: Target) -> None:
    """Create the target's tables, its offsets and its sync log where missing."""
    with retriable_outages(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
        target.create_schema(conn)
        offsets.create(conn)
        sync_log.create(conn)
