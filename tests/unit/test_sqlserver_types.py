"""Exigo's SQL Server column types mapped to the contract, at their edges: MONEY's four
decimals, DATETIME's 1/300 s, the hours a daylight-saving change skips or repeats, NVARCHAR,
BIT, and the types refused at start-up. Values are fed in the shapes the driver returns them
through the real encoder.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import fastavro
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from producer.changed_rows import ChangedRow
from producer.events import EventBuilder, RefreshContext
from producer.partitioning import CustomerPartitioner
from producer.sensitive import ColumnPolicy
from producer.sqlserver_source import earliest_utc
from queuestream.errors import EncodingError
from queuestream.sqlserver import (
    ContractDecimal,
    column_type_problem,
    datetime_bound,
)
from queuestream.sync_schema import Base
from queuestream.tables import TABLES_BY_NAME
from schemas.avro import AvroCodec, row_schema
from tests.unit.sqlserver_support import CHICAGO, DIALECTS, local, reflected_type

# -- types --------------------------------------------------------------------------------


def _read(table: str, column: str, value: Any) -> Any:
    """``value`` as the producer gets it from a SQL Server column of the contract table."""
    dialect = DIALECTS["mssqlpython"]
    column_type = Base.metadata.tables[table].c[column].type
    process = column_type.dialect_impl(dialect).result_processor(dialect, None)
    return value if process is None else process(value)


@pytest.mark.parametrize(
    ("column", "money", "read"),
    [
        ("Total", Decimal("12.3400"), Decimal("12.34")),
        ("Total", Decimal("-0.0100"), Decimal("-0.01")),
        ("Total", Decimal("0.0000"), Decimal("0.00")),
        ("Total", Decimal("99999999999999.9900"), Decimal("99999999999999.99")),
        ("Total", Decimal("12.3456"), Decimal("12.3456")),  # not exact: left to be refused
        ("Total", Decimal("12.3450"), Decimal("12.3450")),
        ("Total", Decimal("12.3"), Decimal("12.3")),
        ("Total", None, None),
    ],
)
def test_money_takes_the_contract_scale_only_when_exact(
    column: str, money: Decimal | None, read: Decimal | None
) -> None:
    found = _read("Orders", column, money)
    assert found == read
    assert str(found) == str(read)  # the scale too: 12.34, not 12.3400


def test_other_databases_read_decimals_as_before() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    for dialect in (reflected_type(postgresql.dialect), reflected_type(sqlite.dialect)):
        impl = Base.metadata.tables["Orders"].c.Total.type.dialect_impl(dialect)
        assert not isinstance(impl, ContractDecimal)


def _event_builder(table: str) -> EventBuilder:
    context = RefreshContext("r1", "exigo", "exigo", "dbo", None, None, resync=False)
    return EventBuilder(
        TABLES_BY_NAME[table],
        context,
        AvroCodec.from_url("exigo", None),
        ColumnPolicy({}, None),
        CustomerPartitioner(6),
        CHICAGO,
    )


def _payment(**values: Any) -> ChangedRow:
    stamp = local(2026, 7, 1, 12, 0)
    row: dict[str, Any] = {
        "PaymentID": 7,
        "CustomerID": 3,
        "OrderID": 5,
        "PaymentTypeID": 1,
        "PaymentDate": stamp,
        "Amount": _read("Payments", "Amount", Decimal("12.3400")),
        "CurrencyCode": "usd",
        "AuthorizationCode": None,
        "Memo": "paid",
        "CreatedDate": stamp,
        "ModifiedDate": stamp,
    }
    row.update(values)
    return ChangedRow.of(TABLES_BY_NAME["payments"], row, 3)


def _decoded(table: str, row_bytes: bytes) -> dict[str, Any]:
    schema = fastavro.parse_schema(row_schema(table))
    return cast("dict[str, Any]", fastavro.schemaless_reader(io.BytesIO(row_bytes), schema, None))


def test_a_money_value_read_from_sql_server_is_published_exactly() -> None:
    event = _event_builder("payments").build(_payment(), total_order=1)
    assert _decoded("payments", event.row)["Amount"] == Decimal("12.34")


@pytest.mark.parametrize(
    ("money", "reason"),
    [
        (Decimal("12.3456"), "Scale"),  # a fraction of a cent: not the contract's scale
        (Decimal("922337203685477.5807"), "does not fit decimal(16,2)"),  # MONEY's largest
        (Decimal("-922337203685477.5808"), "does not fit decimal(16,2)"),
    ],
)
def test_money_that_does_not_fit_is_refused_naming_the_column(money: Decimal, reason: str) -> None:
    row = _payment(Amount=_read("Payments", "Amount", money))
    with pytest.raises(EncodingError, match=re.escape(reason)) as caught:
        _event_builder("payments").build(row, total_order=1)
    assert (caught.value.table, caught.value.column) == ("payments", "Amount")


def test_nvarchar_with_a_lone_surrogate_is_refused_naming_the_column() -> None:
    with pytest.raises(EncodingError) as caught:
        _event_builder("payments").build(_payment(Memo="paid \ud800"), total_order=1)
    assert caught.value.column == "Memo"


def test_nvarchar_text_is_published_as_is() -> None:
    event = _event_builder("payments").build(_payment(Memo="Zoë 支払 😀"), total_order=1)
    assert _decoded("payments", event.row)["Memo"] == "Zoë 支払 😀"


def test_bit_where_the_contract_has_an_int_is_published_as_0_or_1() -> None:
    for bit, number in ((True, 1), (False, 0)):
        event = _event_builder("payments").build(_payment(PaymentTypeID=bit), total_order=1)
        assert _decoded("payments", event.row)["PaymentTypeID"] == number


def _micros(moment: datetime) -> int:
    return round((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        # DATETIME's 1/300 s ticks, as the driver gives them: whole milliseconds.
        (local(2026, 7, 1, 12, 0, 0, 3000), datetime(2026, 7, 1, 17, 0, 0, 3000, UTC)),
        (local(2026, 7, 1, 23, 59, 59, 997000), datetime(2026, 7, 2, 4, 59, 59, 997000, UTC)),
        # The last instant before clocks go forward (CST, UTC-6) and the first after (CDT).
        (local(2026, 3, 8, 1, 59, 59, 997000), datetime(2026, 3, 8, 7, 59, 59, 997000, UTC)),
        (local(2026, 3, 8, 3, 0), datetime(2026, 3, 8, 8, 0, tzinfo=UTC)),
        # 02:30 that day does not exist: read with the offset before the change (CST),
        # so it lands after 03:00 CDT. Only a wrong clock or a typed-in date writes it.
        (local(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 8, 30, tzinfo=UTC)),
        # 01:30 on 1 November happens twice (CDT, then CST): always read as the first.
        (local(2026, 11, 1, 1, 30), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        (local(2026, 11, 1, 2, 0), datetime(2026, 11, 1, 8, 0, tzinfo=UTC)),
        (local(1900, 1, 1), datetime(1900, 1, 1, 6, 0, tzinfo=UTC)),  # DATETIME's day 0
    ],
)
def test_datetime_in_local_time_is_published_as_utc_micros_exactly(
    local: datetime, utc: datetime
) -> None:
    event = _event_builder("payments").build(_payment(ModifiedDate=local), total_order=1)
    assert event.version == _micros(utc)
    assert _decoded("payments", event.row)["ModifiedDate"] == utc


def test_a_bound_in_the_repeated_hour_takes_its_earlier_reading() -> None:
    assert earliest_utc(local(2026, 11, 1, 1, 30), CHICAGO) == datetime(
        2026, 11, 1, 6, 30, tzinfo=UTC
    )
    # A time that does not exist: the earlier of its two readings, too.
    assert earliest_utc(local(2026, 3, 8, 2, 30), CHICAGO) == datetime(
        2026, 3, 8, 7, 30, tzinfo=UTC
    )
    assert earliest_utc(local(2026, 7, 1, 12, 0), CHICAGO) == datetime(
        2026, 7, 1, 17, 0, tzinfo=UTC
    )


def test_window_bounds_fall_on_times_datetime_holds_exactly() -> None:
    moment = datetime(2026, 7, 1, 12, 0, 0, 6789, UTC)
    assert datetime_bound(moment) == datetime(2026, 7, 1, 12, 0, 0, 0, UTC)
    assert datetime_bound(datetime(2026, 7, 1, 12, 0, 0, 19999, UTC)).microsecond == 10000
    # 10 ms is 3 ticks of 1/300 s: a DATETIME holds the bound itself, not a neighbour.
    assert (10_000 * 300) % 1_000_000 == 0


@pytest.mark.parametrize(
    ("contract", "found", "problem"),
    [
        ("ModifiedDate", reflected_type(mssql.DATETIME2), None),
        ("ModifiedDate", sa.DATETIME(), None),
        ("ModifiedDate", mssql.SMALLDATETIME(), None),
        ("ModifiedDate", reflected_type(mssql.DATETIMEOFFSET), "it is DATETIMEOFFSET"),
        ("ModifiedDate", sa.NVARCHAR(30), "it is NVARCHAR(30)"),
        ("Amount", mssql.MONEY(), None),
        ("Amount", mssql.SMALLMONEY(), None),
        ("Amount", sa.DECIMAL(19, 4), None),
        ("Amount", sa.FLOAT(), "it is FLOAT; the contract needs MONEY"),
        ("Amount", reflected_type(mssql.REAL), "it is REAL"),
        ("PaymentTypeID", mssql.BIT(), None),
        ("PaymentTypeID", mssql.TINYINT(), None),
        ("PaymentTypeID", sa.BIGINT(), "it is BIGINT; the contract needs INT"),
        ("PaymentTypeID", sa.VARCHAR(10), "it is VARCHAR(10)"),
        ("Memo", sa.NVARCHAR(200), None),
        ("Memo", mssql.NTEXT(), None),
        ("Memo", sa.INTEGER(), "it is INTEGER"),
    ],
)
def test_sql_server_column_types_that_map_to_the_contract(
    contract: str, found: Any, problem: str | None
) -> None:
    column_type = Base.metadata.tables["Payments"].c[contract].type
    found_problem = column_type_problem(column_type, found)
    if problem is None:
        assert found_problem is None
    else:
        assert found_problem is not None and problem in found_problem
