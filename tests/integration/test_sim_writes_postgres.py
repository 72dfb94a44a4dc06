"""The simulator's writes to PostgreSQL (a COPY per table, an UPDATE per shape) commit
what its statements through SQLAlchemy commit.

Two fresh PostgreSQL databases get the same seeded activity, deletes included (they
read the database within a transaction, so what is held is written first), from the
same ticking clock: one through psycopg's COPY and ``UPDATE ... FROM unnest(...)``,
one through SQLAlchemy's ``executemany``. Every table holds the same rows, values and
types in both.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from producer.sim_writes import PendingWrites
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.sync_schema import Base

pytestmark = pytest.mark.postgres

CHICAGO = ZoneInfo("America/Chicago")


def _clock() -> Callable[[], datetime]:
    ticks = iter(range(10**9))
    # local wall time, across the spring-forward gap
    start = datetime(2026, 3, 8, 1, 59, tzinfo=CHICAGO).replace(tzinfo=None)
    return lambda: start + timedelta(milliseconds=next(ticks) * 7)


def _simulate(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url, writer=True)
    try:
        simulator = Simulator(engine, CHICAGO, seed=23, clock=_clock(), deletes=True)
        stats = simulator.run(1500, per_transaction=40)
        assert stats.deletes > 0 and stats.rows_written > 3000
        with engine.connect() as conn:
            return {
                name: [
                    (tuple(type(v).__name__ for v in row), tuple(row))
                    for row in conn.execute(sa.select(table).order_by(*table.primary_key))
                ]
                for name, table in Base.metadata.tables.items()
            }
    finally:
        engine.dispose()


def test_copy_and_unnest_commit_what_executemany_commits(
    postgres_database: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _simulate(postgres_database("copy"))
    monkeypatch.setattr(PendingWrites, "_flush_postgres", PendingWrites._flush_statements)
    plain = _simulate(postgres_database("statements"))
    assert {name: len(rows) for name, rows in fast.items()} == {
        name: len(rows) for name, rows in plain.items()
    }
    for name in plain:
        assert fast[name] == plain[name], name
