"""Promise 1: no missed change, with concurrent writers, late commits and shared timestamps."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from producer.refresh import Refresher
from queuestream.databases import create_engine, is_postgres
from queuestream.settings import load_settings
from queuestream.sync_schema import Base, create_source_schema
from tests.integration.kafka_readback import Change, committed_changes

CUSTOMERS = Base.metadata.tables["Customers"]
LONG_TRANSACTION_SECONDS = 2.5
WRITERS_RUN_SECONDS = 6.0


def _customer(cid: int, stamp: datetime) -> dict[str, Any]:
    return {
        "CustomerID": cid,
        "FirstName": "F",
        "LastName": f"L{cid}",
        "Company": None,
        "CustomerTypeID": 1,
        "CustomerStatusID": 1,
        "Email": None,
        "Phone": None,
        "MainAddress1": None,
        "MainAddress2": None,
        "MainCity": None,
        "MainState": None,
        "MainZip": None,
        "MainCountry": None,
        "CurrencyCode": "usd",
        "LanguageID": 0,
        "EnrollerID": None,
        "BirthDate": None,
        "CreatedDate": stamp,
        "ModifiedDate": stamp,
    }


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _steady_writer(engine: sa.Engine, base: int, stop: threading.Event) -> None:
    """Short transactions: inserts, and updates of rows it wrote before."""
    n = 0
    while not stop.is_set():
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            stamp = _now()
            conn.execute(sa.insert(CUSTOMERS), [_customer(base + n, stamp)])
            if n and n % 3 == 0:
                conn.execute(
                    sa.update(CUSTOMERS)
                    .where(CUSTOMERS.c.CustomerID == base + n - 2)
                    .values(LastName="edited", ModifiedDate=stamp)
                )
        n += 1
        stop.wait(0.02)


def _shared_timestamp_writer(engine: sa.Engine, base: int, stop: threading.Event) -> None:
    """Big transactions whose rows all share one timestamp."""
    n = 0
    while not stop.is_set():
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            stamp = _now()
            conn.execute(sa.insert(CUSTOMERS), [_customer(base + n + i, stamp) for i in range(300)])
        n += 300
        stop.wait(0.7)


def _long_writer(engine: sa.Engine, base: int, stop: threading.Event, hold: float) -> None:
    """A transaction stamps its rows at its start and commits seconds later."""
    n = 0
    while not stop.is_set():
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            stamp = _now()
            conn.execute(sa.insert(CUSTOMERS), [_customer(base + n + i, stamp) for i in range(5)])
            time.sleep(hold)
        n += 5
        stop.wait(0.3)


@pytest.mark.slow
def test_concurrent_writers_lose_nothing_and_duplicate_nothing(
    source_url: str, kafka_bootstrap: str, unique: str
) -> None:
    engine = create_engine(source_url, writer=True)
    create_source_schema(engine)
    postgres = is_postgres(engine)
    # SQLite cannot show transactions in flight: the settle delay must outlast the longest
    # write transaction. On PostgreSQL the bound comes from pg_stat_activity instead.
    hold = LONG_TRANSACTION_SECONDS if postgres else 1.0
    settings = load_settings(
        None,
        source_url=source_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=unique,
        partitions=3,
        settle_seconds=2.0,
        pg_clock_allowance_seconds=0.2,
        overlap_seconds=1.0,
    )
    refresher = Refresher(settings, create_engine(source_url))
    stop = threading.Event()
    failures: list[BaseException] = []

    def guarded(target: Any, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                failures.append(exc)

        return threading.Thread(target=run)

    writers = [
        guarded(_steady_writer, engine, 1_000_000, stop),
        guarded(_steady_writer, engine, 2_000_000, stop),
        guarded(_shared_timestamp_writer, engine, 3_000_000, stop),
        guarded(_long_writer, engine, 4_000_000, stop, hold),
    ]
    for writer in writers:
        writer.start()
    refreshes = 0
    try:
        deadline = time.monotonic() + WRITERS_RUN_SECONDS
        while time.monotonic() < deadline:
            refresher.refresh()
            refreshes += 1
            time.sleep(0.15)
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=30)
    last_write = datetime.now(UTC)
    # Final refreshes until the watermark has passed every write.
    for _ in range(20):
        refresher.refresh()
        watermark = refresher.progress.watermark
        assert watermark is not None
        if watermark > last_write + timedelta(milliseconds=100):
            break
        time.sleep(0.5)
    refresher.close()
    assert not failures, f"a writer failed: {failures[0]!r}"
    assert refreshes >= 5

    with engine.connect() as conn:
        rows = conn.execute(sa.select(CUSTOMERS.c.CustomerID, CUSTOMERS.c.ModifiedDate)).all()
    engine.dispose()
    expected: set[Change] = {
        ("customers", (cid,), stamp.replace(tzinfo=UTC)) for cid, stamp in rows
    }
    changes, _ = committed_changes(kafka_bootstrap, unique)
    customer_changes = {c: n for c, n in changes.items() if c[0] == "customers"}
    missing = expected - set(customer_changes)
    duplicated = {c: n for c, n in customer_changes.items() if n > 1}
    assert not missing, f"{len(missing)} changes never reached Kafka, e.g. {sorted(missing)[:3]}"
    assert not duplicated, f"{len(duplicated)} changes published more than once"
    # Late commits and shared timestamps really happened.
    long_rows = [c for c in expected if 4_000_000 <= c[1][0] < 5_000_000]
    shared = [c for c in expected if 3_000_000 <= c[1][0] < 4_000_000]
    assert len(long_rows) >= 5
    assert len(shared) >= 600
