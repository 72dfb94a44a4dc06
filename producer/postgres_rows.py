"""PostgreSQL rows read through psycopg's own server-side cursor, inside a snapshot.

SQLAlchemy hands psycopg's values of the sync schema's column types on unchanged;
reading them without its Row between, each row made a :class:`ChangedRow` as psycopg
reads it, takes a third of the time a row takes to read. A query with a column of
another type is left to SQLAlchemy (:func:`open_cursor` says None). psycopg's
errors are raised as SQLAlchemy's, so an outage is still one
(:func:`queuestream.databases.retriable_outages`).

An amount (``numeric``) is read as the text PostgreSQL sends, not made a Decimal:
the row writers take a decimal field's text and write the Decimal it spells, the one
psycopg would have made of it (``Decimal(text)``), keeping the bytes by that text, and
only a row that goes to fastavro or a dead letter has Decimals made of its amounts
(:meth:`schemas.avro.envelope.RowEncoder.resolved`). Reading an order line, five
amounts, takes half the time.

The cursor is declared by hand rather than through psycopg's ``ServerCursor``, to
spend fewer round trips on cores the load keeps busy: ``DECLARE`` and the first
``FETCH`` go out together (a pipeline: one round trip, where ``ServerCursor`` takes
three, with a ``Describe`` of the portal between; two where libpq is older than 14
and has no pipelines), the first ``FETCH`` says what the
columns are, and no ``CLOSE`` is sent: a cursor ends with the snapshot's
transaction, which ends when the refresh has read its last row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import nullcontext
from functools import cache
from typing import Any

import sqlalchemy as sa

from producer.changed_rows import ChangedRow, RowLayout, check_columns
from queuestream.databases import driver_errors

__all__ = ["DeclaredCursor", "open_cursor", "read", "read_tuples"]

#: PostgreSQL types (OIDs) whose values psycopg returns as SQLAlchemy would hand them on
#: for the sync schema's columns: int2, int4, int8, numeric, text, bpchar, varchar,
#: timestamp, timestamptz. Any other (a float, money) is read through SQLAlchemy.
_PLAIN_OIDS = frozenset({21, 23, 20, 1700, 25, 1042, 1043, 1114, 1184})


#: Names of the cursors declared on the driver (one per query; unique in a transaction).
_CURSOR_NUMBERS = itertools.count()


def _text_loader() -> type:
    """psycopg's loader of text as str, imported here: a producer reading SQLite loads no
    psycopg (9 MB of its row reader's peak)."""
    from psycopg.types.string import TextLoader

    return TextLoader


class DeclaredCursor:
    """A query's rows, ``fetch`` at a time, from a cursor declared in the transaction.

    ``cursor`` is a psycopg cursor of the connection (its ``execute`` and
    ``fetchall``); ``first`` the rows the first ``FETCH`` brought, with the declare.
    """

    def __init__(self, cursor: Any, name: str, fetch: int, first: list[tuple[Any, ...]]) -> None:
        self.cursor = cursor
        self.fetch = fetch
        self.first = first
        self._next = f"FETCH FORWARD {fetch} FROM {name}"

    @property
    def description(self) -> Any:
        return self.cursor.description

    def chunks(self) -> Iterator[list[tuple[Any, ...]]]:
        """The rows, ``fetch`` at a time. A ``FETCH`` that returns fewer rows than asked
        for has reached the end: no other is sent to learn it (a round trip a query; a
        refresh a second makes about twenty queries, on cores the load keeps busy)."""
        chunk, self.first = self.first, []
        while chunk:
            yield chunk
            if len(chunk) < self.fetch:
                return
            self.cursor.execute(self._next, prepare=False)
            chunk = self.cursor.fetchall()


@cache
def _pipelined() -> bool:
    """Can the driver send statements in a pipeline (psycopg on libpq 14 or later)?"""
    from psycopg import Pipeline

    return Pipeline.is_supported()


def _plain_postgres_columns(cursor: Any) -> bool:
    """Are all of the cursor's columns of the types in :data:`_PLAIN_OIDS`?"""
    description = cursor.description
    return description is not None and all(c.type_code in _PLAIN_OIDS for c in description)


def open_cursor(conn: sa.Connection, query: sa.Select[Any], fetch: int) -> DeclaredCursor | None:
    """``query`` declared as a cursor on ``conn``'s driver (in its transaction), its first
    ``fetch`` rows read in the same round trip; None when a column is not of
    :data:`_PLAIN_OIDS` (the query is then SQLAlchemy's to read)."""
    compiled = query.compile(dialect=conn.dialect)
    statement = str(compiled)
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    name = f"queuestream_rows_{next(_CURSOR_NUMBERS)}"
    with driver_errors(conn, statement):
        cursor = driver.cursor()
        cursor.adapters.register_loader("numeric", _text_loader())  # amounts as their text
        # One round trip for both, where libpq can (else two).
        with driver.pipeline() if _pipelined() else nullcontext():
            driver.execute(
                f"DECLARE {name} NO SCROLL CURSOR FOR {statement}", compiled.params, prepare=False
            )
            cursor.execute(f"FETCH FORWARD {fetch} FROM {name}", prepare=False)
        if _plain_postgres_columns(cursor):
            return DeclaredCursor(cursor, name, fetch, cursor.fetchall())
        driver.execute(f"CLOSE {name}", prepare=False)
    return None


def read(conn: sa.Connection, cursor: DeclaredCursor, layout: RowLayout) -> Iterator[ChangedRow]:
    """The rows of a cursor from :func:`open_cursor` as ChangedRows (CustomerID last, 0
    where it is NULL: an order line whose order is gone). Made a chunk at a time, not by
    a row factory called for each."""
    check_columns([c.name for c in cursor.description], layout)
    for chunk in _chunks(conn, cursor):
        yield from [ChangedRow(v, 0 if v[-1] is None else int(v[-1]), layout) for v in chunk]


def read_tuples(conn: sa.Connection, cursor: DeclaredCursor) -> Iterator[tuple[Any, ...]]:
    """The rows of a cursor from :func:`open_cursor`."""
    for chunk in _chunks(conn, cursor):
        yield from chunk


def _chunks(conn: sa.Connection, cursor: DeclaredCursor) -> Iterator[list[tuple[Any, ...]]]:
    """The cursor's chunks, the driver's errors raised as SQLAlchemy's."""
    with driver_errors(conn, "FETCH"):
        yield from cursor.chunks()
