"""Every PostgreSQL session queuestream opens plans a statement for the tables as they are
when it runs, not as they were when psycopg prepared it (``queuestream.databases``).

Against real PostgreSQL: a set-based UPDATE (the shape of the consumers' and the
simulator's) runs often enough on a small, analyzed table for psycopg to prepare it and
PostgreSQL to settle on a generic plan; the table then grows a hundredfold with no
ANALYZE, as a new target or a filling source does within a minute. The plan the
session would run next is read with ``EXPLAIN EXECUTE`` of the prepared statement.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from queuestream.databases import create_engine

pytestmark = pytest.mark.postgres

_UPDATE = (
    "UPDATE grows SET v = u.v FROM unnest(%s::integer[], %s::integer[]) AS u(id, v) "
    "WHERE grows.id = u.id"
)


def test_a_statement_prepared_on_a_small_table_is_planned_for_it_grown(
    postgres_database: Callable[[str], str],
) -> None:
    engine = create_engine(postgres_database("plans"), poolclass=sa.pool.StaticPool)
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                cursor.execute("CREATE TABLE grows (id integer PRIMARY KEY, v integer)")
                cursor.execute("INSERT INTO grows SELECT i, i FROM generate_series(1, 300) i")
                cursor.execute("ANALYZE grows")
                for run in range(15):  # prepared on the 5th, then 10 runs of its plans
                    ids = list(range(run * 10 + 1, run * 10 + 11))
                    cursor.execute(_UPDATE, (ids, ids))
                cursor.execute(
                    "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'UPDATE grows%%'"
                )
                (name,) = cursor.fetchone() or (None,)
                assert name is not None, "psycopg did not prepare the UPDATE"
                cursor.execute("INSERT INTO grows SELECT i, i FROM generate_series(301, 60000) i")
                cursor.execute(f"EXPLAIN EXECUTE {name}('{{7,8,9}}', '{{7,8,9}}')")
                plan = "\n".join(row[0] for row in cursor.fetchall())
            conn.rollback()
    finally:
        engine.dispose()
    assert "Seq Scan on grows" not in plan, plan
    assert "Index Scan using grows_pkey" in plan, plan
