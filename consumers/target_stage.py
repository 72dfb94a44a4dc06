"""PostgreSQL's bulk path for versioned writes: binary COPY into a staging table, one merge.

:func:`consumers.target_sql.upsert_versioned` and
:func:`~consumers.target_sql.delete_versioned` state the version rule; on
PostgreSQL they hand their rows here, where a batch's rows of one target table
travel as one ``COPY`` (psycopg's C row writer, typed with ``set_types``; binary,
or text where a table has decimals, see :func:`_stage_sql`) into a temporary
staging table, and one set-based statement merges them:

- upserts: ``INSERT INTO <table> SELECT ... FROM <staging> ON CONFLICT (<key>)
  DO UPDATE ... WHERE <version rule> RETURNING <key>``: the statement
  :func:`~consumers.target_sql.upsert_versioned` builds, reading the staging table
  instead of parameter arrays;
- deletes: the archive copy (``INSERT INTO <archive> SELECT ... FROM <table> JOIN
  <staging>``) and ``DELETE FROM <table> USING <staging> ... RETURNING <key>``.

The staging tables are created once per database session (``CREATE TEMPORARY
TABLE IF NOT EXISTS ... ON COMMIT DELETE ROWS``): every transaction finds them
empty. The runtime may call a target several times within one transaction (chunks
of a refresh, the savepoint fallback of :mod:`consumers.batch_apply`), so a table
used before in the same transaction is emptied (``TRUNCATE``) before its next use,
and each call reads only its own rows. Only then: a ``TRUNCATE`` gives the table a
new file and rewrites its catalog row, about a millisecond each time, and a
refresh applied live stages three or four tables in each target. Their columns
have the unbounded form of the target's types (``text``, ``numeric``, ``bigint``):
the assignment to the target column still refuses what does not fit instead of
cutting or rounding it at the COPY, as the parameter arrays did.

The statements run on the SQLAlchemy connection's own psycopg connection, in its
transaction; a psycopg error is raised as SQLAlchemy's ``DBAPIError`` (the class
the savepoint fallback and the outage checks look for), as SQLAlchemy would.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from queuestream.databases import transaction_note

__all__ = ["copy_into_stage", "render", "stage_table"]

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _stage_type(kind: sa.types.TypeEngine[Any]) -> str:
    """The staging column's PostgreSQL type for a target column of type ``kind``."""
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.Boolean):
        return "boolean"
    if isinstance(kind, sa.Integer):
        return "bigint"
    if isinstance(kind, sa.Numeric):
        return "numeric"
    if isinstance(kind, sa.String):
        return "text"
    if isinstance(kind, sa.DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, sa.Date):
        return "date"
    msg = f"no staging type for {kind!r}: add it to consumers.target_stage._stage_type"
    raise NotImplementedError(msg)


@functools.cache
def stage_table(table: sa.Table, columns: tuple[str, ...], kind: str) -> sa.Table:
    """The temporary staging table of ``columns`` of ``table`` (``kind``: its use).

    Columns named in ``table`` take their unbounded type (:func:`_stage_type`);
    another (a delete's version) is a ``bigint``. One name per table, use and
    column list, within PostgreSQL's 63 characters.
    """
    digest = zlib.crc32("\0".join(columns).encode()) & 0xFFFFFFFF
    name = f"qs_{kind}_{table.name}"[:50] + f"_{digest:08x}"
    stage_columns = [
        sa.Column(c, table.c[c].type if c in table.c else sa.BigInteger()) for c in columns
    ]
    return sa.Table(name, sa.MetaData(), *stage_columns, prefixes=["TEMPORARY"])


@functools.cache
def _stage_sql(stage: sa.Table) -> tuple[str, str, str, tuple[str, ...]]:
    """(create, create and empty, COPY, the COPY's types) of ``stage``."""
    types = tuple(_stage_type(c.type) for c in stage.columns)
    quote = _DIALECT.identifier_preparer.quote
    name = quote(stage.name)
    names = ", ".join(quote(c.name) for c in stage.columns)
    definition = ", ".join(
        f"{quote(c.name)} {t}" for c, t in zip(stage.columns, types, strict=True)
    )
    create = f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({definition}) ON COMMIT DELETE ROWS"
    emptied = f"{create}; TRUNCATE {name}"
    # Binary, but text where a numeric column is staged: psycopg dumps a Decimal in
    # text about twice as fast as in binary (measured, 50,000 invoice lines: 0.08 s
    # against 0.16 s), and every other type of these tables faster in binary.
    form = "TEXT" if "numeric" in types else "BINARY"
    return create, emptied, f"COPY {name} ({names}) FROM STDIN (FORMAT {form})", types


def render(statement: Any) -> str:
    """``statement`` as PostgreSQL SQL text, its constants (column defaults too) inline."""
    return str(statement.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


#: The note (:func:`~queuestream.databases.transaction_note`) of the staging tables a
#: transaction has used.
_USED = "queuestream.staged"


def _used_before(connection: sa.Connection, stage: str) -> bool:
    """Has the transaction open on ``connection`` used ``stage`` before? Noted for the
    next call. Without a transaction known, yes (the table is emptied)."""
    used = transaction_note(connection, _USED)
    if used is None or stage in used:
        return True
    used.add(stage)
    return False


def _driver(connection: sa.Connection) -> psycopg.Connection[Any]:
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection), f"not a psycopg connection: {raw!r}"
    return raw


def copy_into_stage(
    connection: sa.Connection,
    stage: sa.Table,
    rows: Sequence[Sequence[Any]],
    then: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Empty ``stage``, COPY ``rows`` (tuples in its column order) into it, run ``then``.

    Returns the rows the last of ``then`` returns (nothing without RETURNING). A psycopg error,
    or a value that the COPY cannot encode, is raised as ``sqlalchemy.exc.DBAPIError``.
    """
    create, emptied, copy_sql, types = _stage_sql(stage)
    statement = emptied if _used_before(connection, stage.name) else create
    try:
        with _driver(connection).cursor() as cursor:
            cursor.execute(statement)
            statement = copy_sql
            with cursor.copy(copy_sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
            for statement in then:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        lost = connection.dialect.is_disconnect(exc, connection.connection, None)  # type: ignore[arg-type]
        error = sa.exc.DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=lost
        )
        if lost:  # as SQLAlchemy does: the pool must not hand this connection out again
            connection.invalidate(error)
        raise error from exc
    except (TypeError, ValueError, OverflowError) as exc:  # a value the COPY cannot encode
        refused = psycopg.DataError(f"{type(exc).__name__}: {exc}")
        raise sa.exc.DBAPIError.instance(statement, None, refused, psycopg.Error) from exc
