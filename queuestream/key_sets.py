"""Sets of keys in SQL: one filter, :func:`among`, in the chunks of :func:`key_chunks`.

Both ends ask about sets of keys: the targets about the orders and customers a batch
touched, the producer about the lines the orders of a refresh have now. On
PostgreSQL the filter is ``column = ANY(:keys)`` with one array parameter, however
many keys: an IN list of thousands of parameters costs tens of milliseconds to send
and plan, and the producer's row reader, asking in lists of 1,000, made PostgreSQL
scan the order lines once per list (a parallel scan of the whole table each time,
where its statistics were older than the table). Elsewhere it is an expanding IN
list, in chunks that fit the database's parameter limit (SQL Server's 2,100).

The array is typed as the unbounded form of the column's type
(:func:`element_type`): cast to VARCHAR(n)[] a text key is cut to n characters and
matches the row holding its first n; cast to INTEGER[] a BIGINT key past 2**31 is
refused. So a value matches exactly the rows that hold it, on every database
(tests/unit/test_key_sets.py, and tests/integration/test_key_sets_postgres.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["KEYS", "among", "element_type", "key_chunks"]

#: The name of the parameter that carries the keys of :func:`among` at execution.
KEYS = "keys"

#: Keys per statement: one array parameter on PostgreSQL; one bound parameter each
#: elsewhere, well below the limits (SQLite 32,766; SQL Server, and any other, 2,100).
_CHUNK = {"postgresql": 50_000, "sqlite": 2000}
_CHUNK_ELSEWHERE = 1000


def element_type(kind: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """The unbounded form of a column type, for the elements of an array parameter.

    An array cast to VARCHAR(n)[] or NUMERIC(p, s)[] would cut or round its values;
    the assignment to (or comparison with) the column still refuses what does not fit.
    A decorated type (an exact amount) is taken by the type it decorates.
    """
    if isinstance(kind, sa.types.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.Numeric):
        return sa.Numeric(asdecimal=True)
    if isinstance(kind, sa.String):
        return sa.Text()
    return kind


def key_chunks(connection: sa.Connection, values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` sorted, each once, in lists small enough for one :func:`among` each."""
    ordered = sorted(set(values))
    size = _CHUNK.get(connection.dialect.name, _CHUNK_ELSEWHERE)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def among(
    column: sa.ColumnElement[Any], dialect: str, *, probe: bool = False
) -> sa.ColumnElement[bool]:
    """``column`` among the values of the parameter :data:`KEYS` (a list, bound at execution).

    A statement may use the filter more than once: every use takes the same list.

    ``probe``: the keys are few beside the table and ``column`` leads an index. On
    PostgreSQL the filter is then a semi-join over the keys (``column IN (SELECT
    unnest(:keys))``), which the planner runs as a lookup in the index for each key
    where the table is large beside them, so the cost follows the keys and not the table.
    With ``= ANY`` it chose a parallel scan of the whole table for the producer's
    question about the lines of a refresh's orders (in the freshness benchmark: 14.7 ms a
    refresh, and two more processes on the machine's cores, against 5.5 ms probing).
    The targets' questions, about a larger share of smaller tables that their statements
    then join on, took 1.3 to 2.1 times as long as semi-joins (in a run where the
    statements left alone took 1.1 to 1.35 times as long): ``= ANY`` there.
    """
    if dialect == "postgresql":
        array = postgresql.ARRAY(element_type(column.type))
        keys = sa.bindparam(KEYS, type_=array)
        if probe:
            return column.in_(sa.select(sa.func.unnest(keys)))
        return column == sa.any_(keys)
    return column.in_(sa.bindparam(KEYS, expanding=True))
