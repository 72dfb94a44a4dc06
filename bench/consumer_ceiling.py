"""The consumer benchmark's ceiling: the consumer's target rows written again, plainly.

Exactly the rows the consumer left in its target tables are read back and
written into empty copies of the same tables (``Target.create_schema`` on another
fresh database) in one transaction, timed from begin to commit, by

- ``copy``: psycopg binary ``COPY ... FROM STDIN (FORMAT BINARY)``, each table's
  column types given with ``set_types``: the fastest way PostgreSQL itself takes
  rows, so that the ratio shows the distance to the database's own limit;
- ``insert``: SQLAlchemy Core executemany INSERTs (psycopg 3's pipelined
  ``executemany``, one prepared INSERT a row), the ceiling the benchmark used
  before, kept beside it for comparison. On SQLite, the only one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from bench.consuming import count_target_rows
from bench.errors import BenchError
from bench.scratch import postgres_database, sqlite_database, writer_engine
from consumers.target import Target
from consumers.target_sql import Money

__all__ = ["CEILINGS", "CEILING_NAMES", "ceiling"]


CEILINGS = ("copy", "insert")


CEILING_NAMES = {
    "copy": "psycopg binary COPY FROM STDIN",
    "insert": "SQLAlchemy Core executemany INSERT (psycopg pipeline)",
}


def _insert_rows(conn: sa.Connection, table: sa.Table, rows: list[tuple[Any, ...]]) -> None:
    names = [c.name for c in table.columns]
    conn.execute(sa.insert(table), [dict(zip(names, row, strict=True)) for row in rows])


def _binary_type(kind: sa.types.TypeEngine[Any]) -> str:
    """The PostgreSQL type a binary COPY sends for a column of type ``kind``."""
    if isinstance(kind, Money):
        return "numeric"
    for python, name in (
        (sa.Boolean, "bool"),
        (sa.BigInteger, "int8"),
        (sa.SmallInteger, "int2"),
        (sa.Integer, "int4"),
        (sa.Numeric, "numeric"),
        (sa.String, "text"),
    ):
        if isinstance(kind, python):
            return name
    if isinstance(kind, sa.DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, sa.Date):
        return "date"
    msg = f"no binary COPY type for {kind!r}: add it to bench.consumer_ceiling._binary_type"
    raise BenchError(msg)


def _copy_rows(conn: sa.Connection, table: sa.Table, rows: list[tuple[Any, ...]]) -> None:
    names = ", ".join(f'"{c.name}"' for c in table.columns)
    types = [_binary_type(c.type) for c in table.columns]
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    statement = f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT BINARY)'
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_WRITERS: dict[str, Callable[[sa.Connection, sa.Table, list[tuple[Any, ...]]], None]] = {
    "copy": _copy_rows,
    "insert": _insert_rows,
}


def ceiling(target: Target, consumer_url: str, server_url: str | None, method: str) -> float:
    """Write the consumer's target rows again into empty copies of its tables; seconds.

    ``server_url`` is the PostgreSQL server of the copies (None: a SQLite file,
    where ``method`` must be ``insert``).
    """
    tables = target.metadata.sorted_tables
    source = writer_engine(consumer_url)
    try:
        with source.connect() as conn:
            rows = {t.name: [tuple(r) for r in conn.execute(sa.select(t))] for t in tables}
    finally:
        source.dispose()
    write = _WRITERS[method]
    database = postgres_database(server_url) if server_url is not None else sqlite_database()
    with database as url:
        engine = writer_engine(url)
        try:
            with engine.begin() as conn:
                target.create_schema(conn)
            started = time.perf_counter()
            with engine.begin() as conn:
                for table in tables:
                    if rows[table.name]:
                        write(conn, table, rows[table.name])
            seconds = time.perf_counter() - started
        finally:
            engine.dispose()
        written = count_target_rows(target, url)
    wanted = {name: len(r) for name, r in rows.items()}
    if written != wanted:
        msg = f"{target.name} ceiling: wrote {written}, expected {wanted}"
        raise BenchError(msg)
    return seconds
