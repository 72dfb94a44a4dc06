"""PostgreSQL rows read through psycopg's own cursor are the rows SQLAlchemy reads.

The producer reads a PostgreSQL source's changed rows through a server-side
cursor of psycopg's, each row made a ChangedRow as psycopg reads it
(``FrozenSnapshot._driver_rows``), where SQLAlchemy would hand the same values on
unchanged, but for amounts: those the driver's cursor reads as the text PostgreSQL
sends. On a simulated source in a real PostgreSQL, with an order line whose order
is gone, both readings give the same rows, values and types for every table and
every way a snapshot reads (each amount's text spelling SQLAlchemy's Decimal), and
the same events; a column of another type (a float) is read through SQLAlchemy;
and a connection that breaks mid-read is an outage, as it is through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from producer import postgres_rows, source_reader
from producer.changed_rows import ChangedRow
from producer.events import RowPreparer
from producer.partitioning import CustomerPartitioner
from producer.sensitive import column_policy
from producer.source_reader import FrozenSnapshot, SourceReader
from queuestream.databases import create_engine
from queuestream.errors import DatabaseUnavailableError
from queuestream.settings import Settings, load_settings
from queuestream.sync_schema import Base
from queuestream.tables import TABLES, TABLES_BY_NAME
from schemas.avro import AvroCodec
from tests.source_readings import (
    ALL_TIME,
    both_readings,
    simulate_with_an_orphaned_line,
    typed,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def source(postgres_url: str) -> Iterator[Settings]:
    settings = load_settings(None, source_url=postgres_url, source_timezone="America/Chicago")
    engine = create_engine(postgres_url, writer=True)
    try:
        simulate_with_an_orphaned_line(engine, settings.zone, 600)
    finally:
        engine.dispose()
    yield settings


def _both(settings: Settings) -> tuple[dict[str, list[ChangedRow]], dict[str, list[ChangedRow]]]:
    """Each reading of the same snapshot: through psycopg's cursor, then SQLAlchemy's."""
    return both_readings(settings, "_psycopg")


def _amounts(name: str) -> set[str]:
    """The amount (numeric) columns of the table a reading of ``name`` is of."""
    spec = TABLES_BY_NAME[name.split()[0]]
    table = Base.metadata.tables[spec.source]
    return {c.name for c in table.columns if isinstance(c.type, sa.Numeric)}


def _amounts_made_decimal(rows: list[ChangedRow], amounts: set[str]) -> list[ChangedRow]:
    """``rows`` with every amount, read as its text, made the Decimal it spells."""
    made = []
    for changed in rows:
        row = changed.row
        for column in amounts:
            if row[column] is not None:
                assert type(row[column]) is str, (column, row[column])
                row[column] = Decimal(row[column])
        values = tuple(row[c] for c in changed.layout.columns)
        made.append(ChangedRow(values, changed.customer_id, changed.layout))
    return made


@pytest.mark.parametrize(
    ("pipelined", "fetch"),
    [(True, None), (False, None), (True, 7)],
    ids=["pipelined", "without-pipelines", "fetched-by-7"],
)
def test_the_driver_reads_what_sqlalchemy_reads_amounts_as_their_text(
    source: Settings, monkeypatch: pytest.MonkeyPatch, pipelined: bool, fetch: int | None
) -> None:
    """Every value and its type as SQLAlchemy reads it, but amounts: those are the text
    PostgreSQL sent, spelling the very Decimal SQLAlchemy reads (sign, digits, exponent);
    the cursor declared with its first FETCH in a pipeline or without (libpq before
    14), and its rows in one FETCH or in many."""
    monkeypatch.setattr(postgres_rows, "_pipelined", lambda: pipelined)
    if fetch is not None:
        monkeypatch.setattr(source_reader, "_FETCH", fetch)
    driver, alchemy = _both(source)
    assert driver.keys() == alchemy.keys()
    for name in driver:
        amounts = _amounts(name)
        assert typed(_amounts_made_decimal(driver[name], amounts)) == typed(alchemy[name]), name
        spelled = [
            (Decimal(d.row[c]).as_tuple(), a.row[c].as_tuple())
            for d, a in zip(driver[name], alchemy[name], strict=True)
            for c in amounts
            if a.row[c] is not None
        ]
        assert all(text == decimal for text, decimal in spelled), name
        assert spelled or not amounts, name
    lines = driver["order_details"]
    assert len(lines) > 100
    assert any(changed.customer_id == 0 for changed in lines)  # the orphaned line
    assert all(changed.customer_id > 0 for changed in driver["orders"])
    assert any(v is None for changed in driver["customers"] for v in changed.row.values())
    assert all(len(rows) > 0 for rows in driver.values())


def test_both_readings_make_the_same_events(source: Settings) -> None:
    """What the row reader makes of each row (key, the row's Avro bytes, op, version,
    partition) is the same from the amounts' text as from SQLAlchemy's Decimals."""
    driver, alchemy = _both(source)
    codec = AvroCodec(source.topic_prefix)
    partitioner = CustomerPartitioner(6)
    policy = column_policy(source)
    for name in driver:
        spec = TABLES_BY_NAME[name.split()[0]]
        prepare = RowPreparer(spec, codec, policy, partitioner, source.zone, None, False).prepare
        made = [prepare(changed) for changed in driver[name]]
        assert made == [prepare(changed) for changed in alchemy[name]], name
        assert all(type(event) is tuple for event in made), name  # none refused


def test_the_overlaps_keys_and_versions_are_what_sqlalchemy_reads(source: Settings) -> None:
    """What the overlap is checked by (``FrozenSnapshot.versions``): each row's key and
    ModifiedDate, read through psycopg's cursor as through SQLAlchemy."""
    reader = SourceReader(create_engine(source.source_url), source)

    def versions(snapshot: FrozenSnapshot) -> dict[str, list[tuple[Any, ...]]]:
        return {
            spec.name: [
                (key, type(key), tuple(map(type, key)), stamp, type(stamp))
                for key, stamp in snapshot.versions(spec, *ALL_TIME)
            ]
            for spec in TABLES
        }

    try:
        with reader.frozen() as snapshot:
            driver = versions(snapshot)
            snapshot._psycopg = False
            alchemy = versions(snapshot)
    finally:
        reader.engine.dispose()
    assert all(len(found) > 0 for found in driver.values())
    assert driver == alchemy  # keys as tuples both ways: the overlap holds them in a set


def test_a_column_of_another_type_is_read_through_sqlalchemy(source: Settings) -> None:
    engine = create_engine(source.source_url, writer=True)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                'ALTER TABLE "Payments" ALTER COLUMN "Amount" TYPE double precision'
            )
    finally:
        engine.dispose()
    driver, alchemy = _both(source)
    payments = driver["payments"]
    assert payments
    assert all(type(changed.row["Amount"]) is Decimal for changed in payments)
    assert typed(payments) == typed(alchemy["payments"])


def test_a_connection_broken_mid_read_is_an_outage(
    source: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_reader, "_FETCH", 10)  # the rows after the first ten: FETCHed
    reader = SourceReader(create_engine(source.source_url), source)
    admin = create_engine(source.source_url)
    spec = TABLES_BY_NAME["order_details"]
    raised: BaseException | None = None
    try:
        # Leaving the snapshot fails too (its rollback): the outage is caught where the
        # rows are read, and again where the snapshot is left.
        with pytest.raises(DatabaseUnavailableError), reader.frozen() as snapshot:
            pid = snapshot.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            rows = snapshot.changed_rows(spec, *ALL_TIME)
            next(rows)
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            try:
                for _ in rows:
                    pass
            except Exception as exc:  # its kind is the assertion
                raised = exc
    finally:
        reader.engine.dispose()
        admin.dispose()
    assert isinstance(raised, DatabaseUnavailableError), repr(raised)


def test_the_snapshot_reads_without_jit_and_leaves_the_setting_behind(source: Settings) -> None:
    """A snapshot's queries are not JIT-compiled (a large window's query of lines would
    be, for a cost of 90 ms and more); the connection, back in the pool, has its own
    setting again (on here, whatever the server's default)."""
    reader = SourceReader(create_engine(source.source_url, pool_size=1, max_overflow=0), source)
    try:
        with reader.engine.connect() as conn:
            conn.exec_driver_sql("SET jit = on")  # the session's, as a server default would
            conn.commit()
        with reader.frozen() as snapshot:
            assert snapshot.conn.exec_driver_sql("SHOW jit").scalar_one() == "off"
        with reader.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW jit").scalar_one() == "on"
    finally:
        reader.engine.dispose()
