"""SQLite rows read through the sqlite3 driver's cursor are the rows SQLAlchemy reads.

The producer reads a SQLite source's changed rows from the driver's cursor and runs
SQLAlchemy's own result processors on them (``producer.sqlite_rows``). On a simulated
source, with an order line whose order is gone, amounts stored as text, as floats and
as integers, text that is not UTF-8 and NULLs, both readings give the same rows, values
and types for every table and every way a snapshot reads; and a locked database is
still an outage to wait out.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from producer import source_reader, sqlite_rows
from producer.changed_rows import RowLayout
from producer.events import STATE_KEY, PreparedRow, RefusedRow, RowPreparer
from producer.partitioning import CustomerPartitioner
from producer.sensitive import column_policy
from producer.source_reader import SourceReader
from queuestream.databases import create_engine
from queuestream.errors import DatabaseUnavailableError, EncodingError
from queuestream.settings import Settings, load_settings
from queuestream.tables import TABLES, TABLES_BY_NAME
from schemas.avro import AvroCodec
from tests.source_readings import (
    ALL_TIME,
    WRONG_TYPES,
    both_readings,
    simulate_with_an_orphaned_line,
    typed,
    wrong_typed_source,
)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Settings]:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    settings = load_settings(None, source_url=url, source_timezone="America/Chicago")
    engine = create_engine(url, writer=True)
    try:
        simulate_with_an_orphaned_line(engine, settings.zone, 400)
        with engine.begin() as conn:
            # Amounts as a writer other than SQLAlchemy may leave them: text, an integer,
            # a float with more digits than the scale; and a name that is not UTF-8.
            conn.exec_driver_sql(
                'UPDATE "OrderDetails" SET "PriceEach" = \'12.5\', "Tax" = 3, '
                '"PriceTotal" = 0.1 + 0.2 WHERE "OrderLine" = 1'
            )
            conn.exec_driver_sql(
                'UPDATE "Customers" SET "FirstName" = CAST(X\'4aff6f\' AS TEXT) '
                'WHERE "CustomerID" = (SELECT "CustomerID" FROM "Customers" '
                'ORDER BY "ModifiedDate" DESC LIMIT 1)'
            )
    finally:
        engine.dispose()
    yield settings


@pytest.mark.parametrize("fetch", [7, 5000])
def test_the_driver_reads_what_sqlalchemy_reads(
    source: Settings, fetch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 7 rows a fetch, the row that is not UTF-8 comes after some were given: the
    query read again skips them."""
    monkeypatch.setattr(source_reader, "_FETCH", fetch)
    driver, alchemy = both_readings(source, "_sqlite")
    assert driver.keys() == alchemy.keys()
    for name in driver:
        assert typed(driver[name]) == typed(alchemy[name]), name
    lines = driver["order_details"]
    assert any(changed.customer_id == 0 for changed in lines)  # the orphaned line
    first = [changed.row for changed in lines if changed.row["OrderLine"] == 1]
    assert first
    assert all(type(row["PriceEach"]) is Decimal for row in first)
    assert {row["PriceEach"] for row in first} >= {Decimal("12.50")}
    assert any(v is None for changed in driver["customers"] for v in changed.row.values())
    assert any("\udcff" in str(changed.row["FirstName"]) for changed in driver["customers"])
    assert all(len(rows) > 0 for rows in driver.values())


def test_a_read_the_driver_fails_midway_is_an_outage_to_wait_out(
    source: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's errors reach the snapshot as SQLAlchemy's, which the outage handling
    sorts: here SQLite stops the query after its first rows (SQLITE_INTERRUPT)."""
    monkeypatch.setattr(source_reader, "_FETCH", 10)
    reader = SourceReader(create_engine(source.source_url), source)
    spec = TABLES_BY_NAME["order_details"]
    raised: BaseException | None = None
    try:
        with reader.frozen() as snapshot:
            rows = snapshot.changed_rows(spec, *ALL_TIME)
            next(rows)
            driver = snapshot.conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            driver.set_progress_handler(lambda: 1, 1)  # every step is interrupted
            try:
                for _ in rows:
                    pass
            except Exception as exc:  # its kind is the assertion
                raised = exc
            driver.set_progress_handler(None, 1)
    finally:
        reader.engine.dispose()
    assert isinstance(raised, DatabaseUnavailableError), repr(raised)
    assert "interrupted" in str(raised)


def test_no_row_is_lost_to_a_connection_told_to_read_ahead(source: Settings) -> None:
    """``Connection.execution_options(yield_per=...)`` (what an earlier SQLAlchemy read
    does) sets the connection itself: its results would read rows into a buffer of
    SQLAlchemy's, which the driver's cursor never gives again."""
    reader = SourceReader(create_engine(source.source_url), source)
    spec = TABLES_BY_NAME["payments"]
    try:
        with reader.frozen() as snapshot:
            everything = [c.values for c in snapshot.changed_rows(spec, *ALL_TIME)]
            snapshot.conn.execution_options(yield_per=3)
            again = [c.values for c in snapshot.changed_rows(spec, *ALL_TIME)]
    finally:
        reader.engine.dispose()
    assert len(everything) > 3
    assert again == everything


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.sampled_from([0.0, -0.0, 0, 3, 3.0, 12.5, -12.5, 0.1 + 0.2, 1e-9, 2.0**60, 2**60]),
            st.floats(allow_nan=True, allow_infinity=False, width=64),
            st.integers(-(10**12), 10**12),
        ),
        max_size=60,
    )
)
def test_amounts_kept_by_their_stored_value_are_what_sqlalchemy_makes_of_them(
    stored: list[Any],
) -> None:
    """The reference is SQLAlchemy's processor applied to each value; the converter keeps
    what it made by the stored value, which must never give 0.00 for -0.0 (one key),
    nor anything else than the processor would make."""
    dialect = sqlite.dialect()
    amount = sa.Numeric(18, 2)
    process = amount.dialect_impl(dialect).result_processor(dialect, None)
    assert process is not None
    layout = RowLayout(("Amount",), 0, 0, (0,))
    convert = sqlite_rows._converter([(process, True), (None, False)], layout)
    rows = [(v, 1) for v in stored]
    got = [changed.values[0] for changed in convert(rows + rows)]
    expected = [process(value) for value in stored + stored]
    shown = [(type(v), str(v)) for v in got]
    assert shown == [(type(v), str(v)) for v in expected]


def _prepared(settings: Settings, table: str, column: str) -> list[PreparedRow | RefusedRow]:
    """``table``'s rows read from the source here and prepared (every row of the table:
    a window over all time, or the table as it is for ModifiedDate's row)."""
    spec = next(s for s in TABLES if s.source == table)
    preparer = RowPreparer(
        spec,
        AvroCodec.from_url(settings.topic_prefix, None),
        column_policy(settings),
        CustomerPartitioner(6),
        settings.zone,
        ALL_TIME[0],
        False,
    )
    reader = SourceReader(create_engine(settings.source_url), settings)
    try:
        with reader.frozen() as snapshot:
            if column == "ModifiedDate":  # as procedure mode reads its queue tables
                query = snapshot._select(spec, snapshot._base(spec))
                rows = list(snapshot._stream(spec, query))
            else:
                rows = list(snapshot.changed_rows(spec, *ALL_TIME))
    finally:
        reader.engine.dispose()
    return [preparer.prepare(changed) for changed in rows]


@pytest.mark.parametrize(
    ("table", "key", "column", "value", "why"), WRONG_TYPES, ids=[w[2] for w in WRONG_TYPES]
)
def test_a_value_of_another_type_than_its_column_is_a_refused_row_naming_it(
    tmp_path: Path, table: str, key: str, column: str, value: str, why: str
) -> None:
    """SQLite keeps any type in any column; what SQLAlchemy's processors cannot read (text
    in an amount or a date), or what is not an integer, makes its row refused as a row
    that cannot be encoded is (a dead letter, or the error a refresh waits on), naming
    table, key and column; every other row is prepared."""
    settings, keys = wrong_typed_source(tmp_path / "sync.db", "America/Chicago")
    prepared = _prepared(settings, table, column)
    everything_refused = [p for p in prepared if isinstance(p, RefusedRow)]
    # The table's other wrong values are refused too, each in its own row.
    assert {r.column for r in everything_refused} <= {w[2] for w in WRONG_TYPES if w[0] == table}
    refused = [r for r in everything_refused if r.column == column]
    assert len(refused) == 1, refused
    assert len(prepared) > 10
    spec_name = next(s.name for s in TABLES if s.source == table)
    error = refused[0].error(spec_name)
    assert isinstance(error, EncodingError)
    assert (error.table, error.key, error.column) == (spec_name, {key: keys[column]}, column)
    assert why in error.reason
    assert f"table {spec_name}, key {{'{key}': {keys[column]}}}, column {column}: " in str(error)
    # The dead letter shows the value as the source holds it.
    assert json.loads(refused[0].value)[column] == value


def test_a_key_that_is_no_integer_is_a_refused_row_with_no_place_in_the_state(
    tmp_path: Path,
) -> None:
    """Text, a fraction or bytes in a SQLite key column: fastavro would write 2.5 to the
    key's int as 2 (the row then overwriting line 2), and the state
    keys rows by integers. Each such row is refused naming its key column, with no state
    key; the order's other lines are still asked about, without it."""
    settings = load_settings(None, source_url=f"sqlite:///{tmp_path / 'sync.db'}")
    engine = create_engine(settings.source_url, writer=True)
    try:
        simulate_with_an_orphaned_line(engine, settings.zone, 200)
        with engine.begin() as conn:
            lines = conn.exec_driver_sql(
                'SELECT "OrderID", "OrderLine" FROM "OrderDetails" ORDER BY 1, 2 LIMIT 3'
            ).all()
            spoiled = {"'x'": lines[0], "2.5": lines[1], "X'01'": lines[2]}
            for value, (order, line) in spoiled.items():
                conn.exec_driver_sql(
                    f'UPDATE "OrderDetails" SET "OrderLine" = {value} '
                    'WHERE "OrderID" = ? AND "OrderLine" = ?',
                    (order, line),
                )
    finally:
        engine.dispose()
    prepared = _prepared(settings, "OrderDetails", "OrderLine")
    refused = [p for p in prepared if isinstance(p, RefusedRow)]
    assert sorted(r.reason for r in refused) == sorted(
        f"{v} is not an integer: fix the value in the source" for v in ("'x'", "2.5", r"b'\x01'")
    )
    assert {r.column for r in refused} == {"OrderLine"}
    assert [r.state_key for r in refused] == [None, None, None]
    assert {r.key_values["OrderID"] for r in refused} == {order for order, _ in spoiled.values()}
    kept = [p for p in prepared if not isinstance(p, RefusedRow)]
    assert len(kept) > 10
    assert all(type(k) is int for p in kept for k in p[STATE_KEY])

    reader = SourceReader(create_engine(settings.source_url), settings)
    try:
        with reader.frozen() as snapshot:
            spec = TABLES_BY_NAME["order_details"]
            found = snapshot.keys_under(spec, {order for order, _ in spoiled.values()})
    finally:
        reader.engine.dispose()
    assert found
    assert all(type(line) is int for _order, line in found)
