"""bench/autovacuum.py against real PostgreSQL: a vacuum running in one database of the
run is seen there, by name, and in no other; a manual VACUUM is no autovacuum run.

``make bench-freshness`` reports when PostgreSQL's own maintenance ran beside the
pipeline (and whether the slowest refresh overlapped it); this checks that the
sampling sees a real vacuum and tells the databases apart.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.autovacuum import AutovacuumWatch, overlapping
from queuestream.databases import create_engine


def test_a_vacuum_is_seen_in_its_database_and_no_other(
    postgres_database: Callable[[str], str],
) -> None:
    busy, quiet = postgres_database("vacuumed"), postgres_database("quiet")
    engine = create_engine(busy, writer=True)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE churn (id int PRIMARY KEY, pad text)")
            conn.exec_driver_sql(
                "INSERT INTO churn SELECT i, repeat('x', 40) FROM generate_series(1, 100000) i"
            )
            conn.exec_driver_sql("DELETE FROM churn")
        watch = AutovacuumWatch({"source": busy, "shipping": quiet})
        watch.start()
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                before = conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())")
                started = float(before.scalar_one())
                # Throttled as autovacuum is (a manual VACUUM is not, by default), so
                # that it runs for several samples.
                conn.exec_driver_sql("SET vacuum_cost_delay = '10ms'")
                conn.exec_driver_sql("SET vacuum_cost_limit = 30")
                conn.exec_driver_sql("VACUUM churn")
                after = conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())")
                ended = float(after.scalar_one())
        finally:
            report = watch.stop()
        spans = watch.spans()
    finally:
        engine.dispose()
    assert ended - started > 0.5, "the VACUUM was too quick to be sampled"
    assert spans["source"], report
    assert spans["shipping"] == []
    assert report["source"]["seconds_seen"] > 0
    assert report["shipping"]["seconds_seen"] == 0
    # a manual VACUUM counts in vacuum_count, not in autovacuum_count
    assert report["source"]["vacuums"] == 0
    assert report["shipping"] == {"vacuums": 0, "analyzes": 0, "seconds_seen": 0, "spans": []}
    assert overlapping(spans, started, ended) == ["source"]
    assert overlapping(spans, ended + 5, ended + 6) == []
