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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

from producer.changed_rows import ChangedRow, RowLayout, check_columns
from queuestream.databases import driver_errors

__all__ = ["open_cursor", "read", "read_tuples"]

#: PostgreSQL types (OIDs) whose values psycopg returns as SQLAlchemy would hand them on
#: for the sync schema's columns: int2, int4, int8, numeric, text, bpchar, varchar,
#: timestamp, timestamptz. Any other (a float, money) is read through SQLAlchemy.
_PLAIN_OIDS = frozenset({21, 23, 20, 1700, 25, 1042, 1043, 1114, 1184})


#: Names of the server-side cursors opened on the driver (one per query).
_CURSOR_NUMBERS = itertools.count()


def _text_loader() -> type:
    """psycopg's loader of text as str, imported here: a producer reading SQLite loads no
    psycopg (9 MB of its row reader's peak)."""
    from psycopg.types.string import TextLoader

    return TextLoader


def _plain_postgres_columns(cursor: Any) -> bool:
    """Are all of the cursor's columns of the types in :data:`_PLAIN_OIDS`?"""
    description = cursor.description
    return description is not None and all(c.type_code in _PLAIN_OIDS for c in description)


def open_cursor(conn: sa.Connection, query: sa.Select[Any]) -> Any:
    """``query`` opened as a server-side cursor of psycopg's own on ``conn`` (in its
    transaction), or None when a column is not of :data:`_PLAIN_OIDS`."""
    compiled = query.compile(dialect=conn.dialect)
    statement = str(compiled)
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    with driver_errors(conn, statement):
        cursor = driver.cursor(name=f"queuestream_rows_{next(_CURSOR_NUMBERS)}")
        cursor.adapters.register_loader("numeric", _text_loader())  # amounts as their text
        cursor.execute(statement, compiled.params)
        if _plain_postgres_columns(cursor):
            return cursor
        cursor.close()
    return None


def read(conn: sa.Connection, cursor: Any, layout: RowLayout, fetch: int) -> Iterator[ChangedRow]:
    """The rows of a cursor from :func:`open_cursor` as ChangedRows (CustomerID last, 0
    where it is NULL: an order line whose order is gone), ``fetch`` at a time; it is
    closed at the end. Made a chunk at a time, not by a row factory called for each."""
    check_columns([c.name for c in cursor.description], layout)
    for chunk in _chunks(conn, cursor, fetch):
        yield from [ChangedRow(v, 0 if v[-1] is None else int(v[-1]), layout) for v in chunk]


def read_tuples(conn: sa.Connection, cursor: Any, fetch: int) -> Iterator[tuple[Any, ...]]:
    """The rows of a cursor from :func:`open_cursor`, ``fetch`` at a time; it is closed at
    the end."""
    for chunk in _chunks(conn, cursor, fetch):
        yield from chunk


def _chunks(conn: sa.Connection, cursor: Any, fetch: int) -> Iterator[list[tuple[Any, ...]]]:
    """The cursor's rows, ``fetch`` at a time. A ``FETCH FORWARD`` that returns fewer rows
    than asked for has reached the end: no other is sent to learn it (a round trip a
    query; a refresh a second makes about twenty queries, on cores the load keeps busy)."""
    try:
        with driver_errors(conn, "FETCH"):
            while chunk := cursor.fetchmany(fetch):
                yield chunk
                if len(chunk) < fetch:
                    break
    finally:
        with suppress(conn.dialect.loaded_dbapi.Error):
            cursor.close()  # not sent when the connection or its transaction failed
