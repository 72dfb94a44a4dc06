"""The target database as the consumer runtime meets it: made ready, and its failures told apart.

Three kinds of database errors reach the runtime and they call for different
answers, told apart by :func:`queuestream.failures.database_failure`. An *outage*
(connection refused or lost, the server shutting down) says nothing about the
data: nothing was committed, and the runtime waits and retries (promise 5). A
*permanent* failure (wrong password, database or table missing, permission
denied, a SQLite path that cannot be opened) will not pass by waiting: the
consumer stops at once with one line, even with ``--until-idle``. Every other
database error is the database refusing what it was given (a constraint, a value
that does not fit): retrying cannot help, and batch apply (:mod:`.batch_apply`)
looks for the events that cause it (promise 6). :func:`is_outage` tells the first
two from the third; :func:`retriable_outages` raises them as
:class:`~queuestream.errors.DatabaseUnavailableError` (retried) or
:class:`~queuestream.errors.DatabaseAccessError` (not retried).
"""

from __future__ import annotations

import sqlalchemy as sa

from consumers import offsets, sync_log
from consumers.target import Target
from queuestream.databases import is_outage, retriable_outages

__all__ = ["is_outage", "prepare", "retriable_outages"]

#: PostgreSQL advisory lock that serialises creating the target's tables: members of a
#: group starting together would otherwise collide in the catalog (UniqueViolation).
_SCHEMA_LOCK = 0x71736368656D61  # "qschema"


def prepare(engine: sa.Engine, target: Target) -> None:
    """Create the target's tables, its offsets and its sync log where missing."""
    with retriable_outages(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
        target.create_schema(conn)
        offsets.create(conn)
        sync_log.create(conn)
