"""The simulator's writes, held until its transaction ends and then sent a statement per shape.

Written a statement per row, ``queuestream sim`` spent most of its time in round
trips: about 4,700 changed rows/s flat out on local PostgreSQL, too slow for the
freshness benchmark's 10,000 (issue 10). An action now hands its rows to
:class:`PendingWrites`; :meth:`PendingWrites.flush` writes them when the driver
commits (:mod:`producer.simulator`), one ``executemany`` per table for the inserts
and one per table and column set for the updates (psycopg pipelines both).

What commits is what the statement-per-row writer committed, because nobody sees
a transaction's inside: the inserts go first, parents before children
(:data:`INSERT_ORDER`), since every update in the simulator targets a row that
exists by then; several updates of one row in a transaction merge into one, the
later values winning, as they did when each was its own statement. A reader that
needs the database to be current within the transaction (the deletes of
:mod:`producer.sim_deletes` read their candidates) flushes first.

On PostgreSQL the same writes go through psycopg on the transaction's own
connection: the inserts of a table as one ``COPY``, the updates of a shape as one
``UPDATE ... FROM unnest(...)`` of typed arrays, each statement made once.
``executemany`` there built and sent each row's parameters in Python: the simulator
took about 45 µs of CPU a row written, 18 µs since, and at the freshness benchmark's
10,000 rows/s its two processes had taken 40% of one of the machine's two cores from
the pipeline they were loading.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql

__all__ = ["INSERT_ORDER", "PendingWrites"]

#: The tables the simulator inserts into, parents before children (foreign keys).
INSERT_ORDER = (
    "Customers",
    "CustomerSites",
    "CustomerAccounts",
    "Orders",
    "OrderDetails",
    "Payments",
)
#: What the UPDATE's arrays are typed by: the column types as PostgreSQL spells them.
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
#: Rows to insert, by table; rows to update, by (table, key column, the columns set).
_Inserts = dict[str, list[dict[str, Any]]]
_Shapes = dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]]
#: The parameter carrying an update's key (apart from the column names it sets).
_KEY = "_sim_key"


class PendingWrites:
    """Inserts and updates of one source transaction, not yet sent."""

    def __init__(self, tables: dict[str, sa.Table]) -> None:
        self._tables = tables
        self._inserts: dict[str, list[dict[str, Any]]] = {name: [] for name in INSERT_ORDER}
        # (table, key column, key value) -> the values set, merged in the order set
        self._updates: dict[tuple[str, str, Any], dict[str, Any]] = {}

    def insert(self, table: str, rows: list[dict[str, Any]]) -> int:
        """Hold ``rows`` for ``table`` (one of :data:`INSERT_ORDER`); how many."""
        self._inserts[table].extend(rows)
        return len(rows)

    def update(self, table: str, key_column: str, key: Any, values: dict[str, Any]) -> int:
        """Hold an update of the one row of ``table`` whose ``key_column`` is ``key``; 1."""
        self._updates.setdefault((table, key_column, key), {}).update(values)
        return 1

    def flush(self, conn: sa.Connection) -> None:
        """Send what is held through ``conn`` (inserts, then updates); hold nothing after."""
        inserts = {name: rows for name, rows in self._inserts.items() if rows}
        shapes: _Shapes = {}
        for (name, key_column, key), values in self._updates.items():
            shape = (name, key_column, tuple(sorted(values)))
            shapes.setdefault(shape, []).append({_KEY: key, **values})
        self._inserts = {name: [] for name in INSERT_ORDER}
        self._updates.clear()
        if conn.dialect.name == "postgresql":
            self._flush_postgres(conn, inserts, shapes)
        else:
            self._flush_statements(conn, inserts, shapes)

    def _flush_statements(self, conn: sa.Connection, inserts: _Inserts, shapes: _Shapes) -> None:
        """Through SQLAlchemy: one ``executemany`` per table, and per table and shape."""
        for name, rows in inserts.items():
            conn.execute(sa.insert(self._tables[name]), rows)
        for (name, key_column, _columns), params in shapes.items():
            table = self._tables[name]
            conn.execute(sa.update(table).where(table.c[key_column] == sa.bindparam(_KEY)), params)

    def _flush_postgres(self, conn: sa.Connection, inserts: _Inserts, shapes: _Shapes) -> None:
        """Through psycopg, in the same transaction: a COPY per table, an UPDATE per shape."""
        driver = conn.connection.driver_connection  # the transaction's own connection
        assert driver is not None
        with driver.cursor() as cursor:
            for name, rows in inserts.items():
                table = self._tables[name]
                given = tuple(c.name for c in table.columns if c.name in rows[0])
                with cursor.copy(_copy_in(table, given)) as copy:
                    for row in rows:
                        copy.write_row([row[c] for c in given])
            for (name, key_column, columns), params in shapes.items():
                table = self._tables[name]
                arrays = [[p[_KEY] for p in params], *([p[c] for p in params] for c in columns)]
                cursor.execute(_unnest_update(table, key_column, columns), arrays)


@functools.cache
def _copy_in(table: sa.Table, columns: tuple[str, ...]) -> str:
    """``COPY table (columns) FROM STDIN``, made once."""
    return (
        sql.SQL("COPY {} ({}) FROM STDIN")
        .format(sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns)))
        .as_string()
    )


@functools.cache
def _unnest_update(table: sa.Table, key_column: str, columns: tuple[str, ...]) -> str:
    """``UPDATE table SET c = u.c, ... FROM unnest(%s::type[], ...) AS u(key, c, ...) WHERE
    table.key = u.key``: one statement for every row of one shape, made once."""
    names = [key_column, *columns]
    types = [sql.SQL(table.c[n].type.compile(dialect=_DIALECT) + "[]") for n in names]
    return (
        sql.SQL("UPDATE {t} SET {sets} FROM unnest({arrays}) AS u({names}) WHERE {t}.{k} = u.{k}")
        .format(
            t=sql.Identifier(table.name),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = u.{c}").format(c=sql.Identifier(c)) for c in columns
            ),
            arrays=sql.SQL(", ").join(sql.SQL("%s::") + t for t in types),
            names=sql.SQL(", ").join(map(sql.Identifier, names)),
            k=sql.Identifier(key_column),
        )
        .as_string()
    )
