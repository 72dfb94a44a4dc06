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
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

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
        for name, rows in self._inserts.items():
            if rows:
                conn.execute(sa.insert(self._tables[name]), rows)
                self._inserts[name] = []
        shapes: dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]] = {}
        for (name, key_column, key), values in self._updates.items():
            shape = (name, key_column, tuple(sorted(values)))
            shapes.setdefault(shape, []).append({_KEY: key, **values})
        self._updates.clear()
        for (name, key_column, _columns), params in shapes.items():
            table = self._tables[name]
            conn.execute(sa.update(table).where(table.c[key_column] == sa.bindparam(_KEY)), params)
