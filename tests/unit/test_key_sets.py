"""The key filter of both ends (``among`` in ``key_chunks``) selects exactly its keys.

The targets used to carry a filter each, and they parted on PostgreSQL: one cast the
array of keys to the column's own type (a text key longer than a VARCHAR(n) column
was cut to n characters, and matched the row holding its prefix), the other to
INTEGER[] whatever the column (a BIGINT key past 2**31 was refused).
:func:`check_key_filter` pins the behaviour of the one filter; it runs here on
SQLite and in tests/integration/test_key_sets_postgres.py on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from queuestream.databases import create_engine
from queuestream.key_sets import KEYS, among, key_chunks

_metadata = sa.MetaData()
_ROWS = sa.Table(
    "rows",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(3), nullable=False),
    sa.Column("big", sa.BigInteger, nullable=False),
)
_COUNT = 5000  # more keys than one chunk on SQLite
_BIG = 2**40


def _select(
    connection: sa.Connection, column: sa.Column[Any], values: list[Any], probe: bool
) -> list[int]:
    """The ids of the rows whose ``column`` is among ``values``, over every chunk."""
    query = sa.select(_ROWS.c.id).where(among(column, connection.dialect.name, probe=probe))
    found: list[int] = []
    for chunk in key_chunks(connection, values):
        found.extend(i for (i,) in connection.execute(query, {KEYS: chunk}))
    return sorted(found)


def check_key_filter(url: str) -> None:
    """What the key filter selects on the database at ``url`` (an empty one)."""
    engine = create_engine(url, writer=True)
    try:
        with engine.begin() as conn:
            _metadata.create_all(conn)
            conn.execute(
                sa.insert(_ROWS),
                [{"id": i, "code": f"{i % 1000:03d}", "big": _BIG + i} for i in range(_COUNT)],
            )
        with engine.connect() as conn:
            for probe in (False, True):
                _check_selects(conn, probe)
    finally:
        engine.dispose()


def _check_selects(conn: sa.Connection, probe: bool) -> None:
    """The filter's answers through ``conn``, as a scan (``= ANY``) or as index probes."""
    wanted = list(range(1, _COUNT, 2))  # unsorted and repeated keys: each row once
    assert _select(conn, _ROWS.c.id, [*reversed(wanted), *wanted[:10]], probe) == wanted
    assert _select(conn, _ROWS.c.id, [-1, _COUNT], probe) == []
    assert not list(key_chunks(conn, []))

    # A text key matches the rows that hold it, and only those: a value longer
    # than the column is not cut to its length.
    assert _select(conn, _ROWS.c.code, ["007"], probe) == [7, 1007, 2007, 3007, 4007]
    assert _select(conn, _ROWS.c.code, ["0071", "007 "], probe) == []

    # A BIGINT key past 2**31 is a key like any other.
    assert _select(conn, _ROWS.c.big, [_BIG + 3, _BIG], probe) == [0, 3]

    # One statement may use the filter twice: both take the same keys (no id
    # matches a BIGINT value, and no row is left unfiltered).
    both = sa.union_all(
        sa.select(_ROWS.c.id).where(among(_ROWS.c.id, conn.dialect.name, probe=probe)),
        sa.select(_ROWS.c.id).where(among(_ROWS.c.big, conn.dialect.name, probe=probe)),
    )
    found = sorted(i for (i,) in conn.execute(both, {KEYS: [2, 3]}))
    assert found == [2, 3]


def test_the_key_filter_selects_exactly_its_keys_on_sqlite(tmp_path: Path) -> None:
    check_key_filter(f"sqlite:///{tmp_path / 'keys.db'}")


def test_key_chunks_sort_and_fit_sqlite_parameter_limit(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'chunks.db'}")
    try:
        with engine.connect() as conn:
            chunks = list(key_chunks(conn, [*range(4500, 0, -1), 7, 7]))
    finally:
        engine.dispose()
    assert [len(c) for c in chunks] == [2000, 2000, 500]
    assert [k for c in chunks for k in c] == list(range(1, 4501))
