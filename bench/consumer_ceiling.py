"""The consumer benchmark's ceiling: the consumer's target rows written again, plainly.

Exactly the rows the consumer left in its target tables are read back and
written into empty copies of the same tables (``Target.create_schema`` on another
fresh database) in one transaction, timed from begin to commit, by SQLAlchemy
Core executemany INSERTs (``insert``: psycopg 3's pipelined ``executemany``) or by
psycopg ``COPY ... FROM STDIN`` (``copy``).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from bench.consuming import count_target_rows
from bench.errors import BenchError
from bench.scratch import postgres_database, writer_engine
from consumers.target import Target

__all__ = ["CEILINGS", "CEILING_NAMES", "ceiling"]


CEILINGS = ("insert", "copy")


CEILING_NAMES = {
    "insert": "SQLAlchemy Core executemany INSERT (psycopg pipeline)",
    "copy": "psycopg COPY FROM STDIN",
}


def _insert_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    conn.execute(sa.insert(table), rows)


def _copy_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def ceiling(target: Target, consumer_url: str, server_url: str, method: str) -> float:
    """Write the consumer's target rows again into empty copies of its tables; seconds."""
    tables = target.metadata.sorted_tables
    source = writer_engine(consumer_url)
    try:
        with source.connect() as conn:
            rows = {
                t.name: [dict(r) for r in conn.execute(sa.select(t)).mappings()] for t in tables
            }
    finally:
        source.dispose()
    write = _copy_rows if method == "copy" else _insert_rows
    with postgres_database(server_url) as url:
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
