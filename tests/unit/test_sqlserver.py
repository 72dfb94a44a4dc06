"""A SQL Server source without a SQL Server: the driver, settings, types and every statement.

No SQL Server runs on this machine. What can be checked without one is checked here: the
error when the driver is missing (the real import, not a stand-in), URL and settings
validation, Exigo's column types mapped to the contract at their edges (MONEY's four
decimals, DATETIME's 1/300 s, the hours a daylight-saving change skips or repeats), and
every statement the producer issues, compiled by SQLAlchemy's mssql dialects and checked
for T-SQL. The README's "SQL Server source" section lists what has not been run against a
live server.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast
from zoneinfo import ZoneInfo

import fastavro
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql.mssqlpython import MSDialect_mssqlpython
from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc
from sqlalchemy.engine import make_url

from producer.events import EventBuilder, RefreshContext
from producer.partitioning import CustomerPartitioner
from producer.sensitive import ColumnPolicy
from producer.source_reader import ChangedRow, FrozenSnapshot, SourceReader
from producer.sqlserver_source import (
    CLOCK_SQL,
    IN_FLIGHT_SQL,
    SNAPSHOT_ALLOWED_SQL,
    SqlServerBound,
    check_sqlserver_source,
    earliest_utc,
    key_after,
    run_procedure,
)
from queuestream.databases import create_engine
from queuestream.errors import ConfigurationError, EncodingError, SourceSchemaError
from queuestream.settings import Settings, load_settings
from queuestream.sqlserver import (
    ContractDecimal,
    column_type_problem,
    datetime_bound,
    sqlserver_url,
)
from queuestream.sync_schema import Base
from queuestream.tables import TABLES, TABLES_BY_NAME
from schemas.avro import AvroCodec, row_schema

CHICAGO = ZoneInfo("America/Chicago")
URL = "mssql://sync:s3cret@db.internal:1433/exigo"


#: The dialects of the two drivers, with the parameter style each has with its driver loaded.
DIALECTS: dict[str, sa.Dialect] = {
    "mssqlpython": MSDialect_mssqlpython(paramstyle="pyformat"),  # type: ignore[no-untyped-call]
    "pyodbc": MSDialect_pyodbc(paramstyle="qmark"),  # type: ignore[no-untyped-call]
}


def _local(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """A SQL Server DATETIME as the driver gives it: naive, in the server's local time."""
    return datetime(year, month, day, hour, minute, second, us)  # noqa: DTZ001


# -- the driver -------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("mssql_python") is not None,
    reason="mssql-python is installed here: the missing-driver error cannot happen",
)
def test_a_missing_driver_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_engine(URL)
    message = str(caught.value)
    assert "mssql_python cannot be imported (No module named 'mssql_python')" in message
    assert "pip install 'queuestream[mssql]'" in message
    assert "s3cret" not in message


def test_a_pyodbc_url_that_cannot_load_says_what_it_needs() -> None:
    try:
        importlib.import_module("pyodbc")
    except ImportError:
        pass
    else:
        pytest.skip("pyodbc imports here")
    with pytest.raises(ConfigurationError, match=r"pyodbc cannot be imported.*ODBC Driver 18"):
        create_engine("mssql+pyodbc://sync@db.internal/exigo")


@pytest.mark.skipif(
    importlib.util.find_spec("mssql_python") is None, reason="needs queuestream[mssql]"
)
def test_with_the_driver_an_mssql_url_reads_through_mssql_python() -> None:
    engine = create_engine(URL)
    assert (engine.dialect.name, engine.dialect.driver) == ("mssql", "mssqlpython")


def test_sql_server_is_read_never_written() -> None:
    with pytest.raises(ConfigurationError, match="never writes"):
        create_engine(URL, writer=True)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("mssql://h/exigo", "mssql+mssqlpython"),
        ("mssql+mssqlpython://h/exigo", "mssql+mssqlpython"),
        ("mssql+pyodbc://h/exigo", "mssql+pyodbc"),
    ],
)
def test_urls_name_a_supported_driver(url: str, driver: str) -> None:
    assert sqlserver_url(make_url(url)).drivername == driver


def test_other_drivers_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'pymssql' is not supported.*mssqlpython"):
        sqlserver_url(make_url("mssql+pymssql://h/exigo"))


# -- settings ---------------------------------------------------------------------------


def test_a_sql_server_source_runs_its_refresh_procedure_by_default() -> None:
    settings = load_settings(source_url=URL, source_timezone="America/Chicago")
    assert settings.refresh_mode == "procedure"
    assert settings.refresh_statement == "EXEC queue.Refresh"
    assert settings.refresh_since_statement == "EXEC queue.Refresh :since"
    explicit = load_settings(source_url=URL, source_timezone="UTC", refresh_mode="watermark")
    assert explicit.refresh_mode == "watermark"
    assert load_settings().refresh_mode == "watermark"  # SQLite keeps its default


def test_the_environment_gives_a_sql_server_source_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUESTREAM_SOURCE_URL", URL)
    monkeypatch.setenv("QUEUESTREAM_SOURCE_TIMEZONE", "Europe/Amsterdam")
    assert load_settings().refresh_mode == "procedure"
    monkeypatch.setenv("QUEUESTREAM_REFRESH_MODE", "watermark")
    assert load_settings().refresh_mode == "watermark"


def test_a_sql_server_source_needs_its_time_zone_named() -> None:
    with pytest.raises(ConfigurationError, match=r"set source_timezone to the server's zone"):
        load_settings(source_url=URL)
    with pytest.raises(ConfigurationError, match=r"source_timezone.*IANA"):
        load_settings(source_url=URL, source_timezone="Central Standard Time")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"source_url": "mssql+pymssql://sync:s3cret@h/exigo"}, r"source_url.*'pymssql'"),
        ({"target_url": "mssql://sync:s3cret@h/shipping"}, r"target_url.*a source only"),
        ({"source_url": "oracle://sync:s3cret@h/exigo"}, r"'oracle'.*mssql://"),
    ],
)
def test_sql_server_urls_are_checked(overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_settings(None, source_timezone="UTC", **overrides)
    assert "s3cret" not in str(caught.value)


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

    for dialect in (_type(postgresql.dialect), _type(sqlite.dialect)):
        impl = Base.metadata.tables["Orders"].c.Total.type.dialect_impl(dialect)
        assert not isinstance(impl, ContractDecimal)


def _event_builder(table: str) -> EventBuilder:
    context = RefreshContext("r1", "exigo", "exigo", None, None, resync=False)
    return EventBuilder(
        TABLES_BY_NAME[table],
        context,
        AvroCodec.from_url("exigo", None),
        ColumnPolicy({}, None),
        CustomerPartitioner(6),
        CHICAGO,
    )


def _payment(**values: Any) -> ChangedRow:
    stamp = _local(2026, 7, 1, 12, 0)
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
    return ChangedRow(row, 3)


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
        (_local(2026, 7, 1, 12, 0, 0, 3000), datetime(2026, 7, 1, 17, 0, 0, 3000, UTC)),
        (_local(2026, 7, 1, 23, 59, 59, 997000), datetime(2026, 7, 2, 4, 59, 59, 997000, UTC)),
        # The last instant before clocks go forward (CST, UTC-6) and the first after (CDT).
        (_local(2026, 3, 8, 1, 59, 59, 997000), datetime(2026, 3, 8, 7, 59, 59, 997000, UTC)),
        (_local(2026, 3, 8, 3, 0), datetime(2026, 3, 8, 8, 0, tzinfo=UTC)),
        # 02:30 that day does not exist: read with the offset before the change (CST),
        # so it lands after 03:00 CDT. Only a wrong clock or a typed-in date writes it.
        (_local(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 8, 30, tzinfo=UTC)),
        # 01:30 on 1 November happens twice (CDT, then CST): always read as the first.
        (_local(2026, 11, 1, 1, 30), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        (_local(2026, 11, 1, 2, 0), datetime(2026, 11, 1, 8, 0, tzinfo=UTC)),
        (_local(1900, 1, 1), datetime(1900, 1, 1, 6, 0, tzinfo=UTC)),  # DATETIME's day 0
    ],
)
def test_datetime_in_local_time_is_published_as_utc_micros_exactly(
    local: datetime, utc: datetime
) -> None:
    event = _event_builder("payments").build(_payment(ModifiedDate=local), total_order=1)
    assert event.version == _micros(utc)
    assert _decoded("payments", event.row)["ModifiedDate"] == utc


def test_a_bound_in_the_repeated_hour_takes_its_earlier_reading() -> None:
    assert earliest_utc(_local(2026, 11, 1, 1, 30), CHICAGO) == datetime(
        2026, 11, 1, 6, 30, tzinfo=UTC
    )
    # A time that does not exist: the earlier of its two readings, too.
    assert earliest_utc(_local(2026, 3, 8, 2, 30), CHICAGO) == datetime(
        2026, 3, 8, 7, 30, tzinfo=UTC
    )
    assert earliest_utc(_local(2026, 7, 1, 12, 0), CHICAGO) == datetime(
        2026, 7, 1, 17, 0, tzinfo=UTC
    )


def test_window_bounds_fall_on_times_datetime_holds_exactly() -> None:
    moment = datetime(2026, 7, 1, 12, 0, 0, 6789, UTC)
    assert datetime_bound(moment) == datetime(2026, 7, 1, 12, 0, 0, 0, UTC)
    assert datetime_bound(datetime(2026, 7, 1, 12, 0, 0, 19999, UTC)).microsecond == 10000
    # 10 ms is 3 ticks of 1/300 s: a DATETIME holds the bound itself, not a neighbour.
    assert (10_000 * 300) % 1_000_000 == 0


def _type(kind: Any, *args: Any) -> Any:
    """A reflected SQL Server type (some of the dialect's constructors are untyped)."""
    return kind(*args)


@pytest.mark.parametrize(
    ("contract", "found", "problem"),
    [
        ("ModifiedDate", _type(mssql.DATETIME2), None),
        ("ModifiedDate", sa.DATETIME(), None),
        ("ModifiedDate", mssql.SMALLDATETIME(), None),
        ("ModifiedDate", _type(mssql.DATETIMEOFFSET), "it is DATETIMEOFFSET"),
        ("ModifiedDate", sa.NVARCHAR(30), "it is NVARCHAR(30)"),
        ("Amount", mssql.MONEY(), None),
        ("Amount", mssql.SMALLMONEY(), None),
        ("Amount", sa.DECIMAL(19, 4), None),
        ("Amount", sa.FLOAT(), "it is FLOAT; the contract needs MONEY"),
        ("Amount", _type(mssql.REAL), "it is REAL"),
        ("PaymentTypeID", mssql.BIT(), None),
        ("PaymentTypeID", mssql.TINYINT(), None),
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


# -- statements ---------------------------------------------------------------------------


class _Result:
    def keys(self) -> list[str]:
        return []

    def partitions(self) -> Iterator[list[Any]]:
        return iter(())

    def all(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class _Recorder:
    """A connection that compiles what it is asked to run for one mssql dialect."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self.engine = SimpleNamespace(url=make_url(URL))
        self.compiled: list[sa.engine.Compiled] = []

    def execution_options(self, **_options: Any) -> _Recorder:
        return self

    def execute(self, statement: Any, _params: Any = None) -> _Result:
        self.compiled.append(
            statement.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
        )
        return _Result()


def _producer_statements(dialect: sa.Dialect) -> list[sa.engine.Compiled]:
    """Every SELECT a refresh, a procedure-mode refresh and a sweep issue, compiled."""
    recorder = _Recorder(dialect)
    settings = Settings(source_url=URL, source_timezone="America/Chicago")
    snapshot = FrozenSnapshot(cast("sa.Connection", recorder), settings)
    start, end = datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 7, 2, tzinfo=UTC)
    for spec in TABLES:
        list(snapshot.changed_rows(spec, start, end))
        list(snapshot.queue_rows(spec))
        snapshot.rows_after(spec, None, 1000)
        snapshot.rows_after(spec, (41, 2), 1000)
    snapshot.keys_under(TABLES_BY_NAME["order_details"], set(range(2500)))
    snapshot.queue_fingerprint()
    return recorder.compiled


#: What SQL Server does not take: PostgreSQL's and SQLite's spellings.
_NOT_TSQL = [
    r"\bLIMIT\b",
    r"\bOFFSET\b(?!.*\bFETCH\b)",
    r"\)\s*[<>]=?\s*\(",  # a row-value comparison
    r"\bRETURNING\b",
    r"::",
    r"\|\|",
    r"\bILIKE\b",
    r"\bNULLS (FIRST|LAST)\b",
    r"\bclock_timestamp\b|\bpg_|\bleast\(|\bgreatest\(",
    r"\bPRAGMA\b|\bsqlite_",
    r'"',  # identifiers are bracketed, not double-quoted
]


@pytest.mark.parametrize("driver", sorted(DIALECTS))
def test_every_producer_statement_compiles_to_t_sql(driver: str) -> None:
    dialect = DIALECTS[driver]
    compiled = _producer_statements(dialect)
    assert len(compiled) == 6 * 4 + 3 + 6
    for statement in compiled:
        text = str(statement)
        for pattern in _NOT_TSQL:
            assert not re.search(pattern, text, re.DOTALL), f"{pattern!r} in {text}"
        assert "[ModifiedDate]" in text or "[OrderID]" in text  # bracket quoting
        assert len(statement.params) <= 2100  # SQL Server's limit of parameters
        marker = "%(" if dialect.paramstyle == "pyformat" else "?"
        if statement.params:
            assert marker in text


def test_the_sweep_takes_a_chunk_with_top_and_spells_out_key_order() -> None:
    compiled = _producer_statements(DIALECTS["mssqlpython"])
    chunks = [str(c) for c in compiled if str(c).startswith("SELECT TOP 1000 ")]
    assert len(chunks) == 12
    lines = next(c for c in chunks if "[OrderDetails].[OrderLine] >" in c)
    assert (
        "[OrderDetails].[OrderID] > %(OrderID_1)s OR [OrderDetails].[OrderID] = "
        "%(OrderID_2)s AND [OrderDetails].[OrderLine] > %(OrderLine_1)s"
    ) in lines
    assert lines.rstrip().endswith("ORDER BY [OrderDetails].[OrderID], [OrderDetails].[OrderLine]")


def test_procedure_mode_reads_the_queue_schema() -> None:
    compiled = [str(c) for c in _producer_statements(DIALECTS["mssqlpython"])]
    queue_reads = [c for c in compiled if "FROM queue.[" in c]
    assert len(queue_reads) == 6 + 6  # the rows, and the fingerprint of each table
    assert any("FROM queue.[OrderDetails]" in c and "FROM [Orders]" in c for c in queue_reads)


@pytest.mark.parametrize(
    ("after", "expected"),
    [((3, 2), [(3, 3), (4, 1), (4, 5)]), ((4, 5), []), ((0, 0), [(3, 1), (3, 2), (3, 3)])],
)
def test_key_after_orders_like_a_row_value_comparison(
    after: tuple[int, int], expected: list[tuple[int, int]]
) -> None:
    keys = [(3, 1), (3, 2), (3, 3), (4, 1), (4, 5)]
    table = sa.table("t", sa.column("a"), sa.column("b"))
    query = (
        sa.select(table.c.a, table.c.b)
        .where(key_after([table.c.a, table.c.b], after))
        .order_by(table.c.a, table.c.b)
        .limit(3)
    )
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (a INT, b INT)")
        conn.execute(sa.insert(table), [{"a": a, "b": b} for a, b in keys])
        found = [tuple(row) for row in conn.execute(query)]
        by_row_value = [
            tuple(row)
            for row in conn.execute(
                sa.text("SELECT a, b FROM t WHERE (a, b) > (:a, :b) ORDER BY a, b LIMIT 3"),
                {"a": after[0], "b": after[1]},
            )
        ]
    assert found == expected == by_row_value
    assert sqlite3.sqlite_version_info >= (3, 15)  # row values, for the comparison above


@pytest.mark.parametrize("statement", [CLOCK_SQL, IN_FLIGHT_SQL, SNAPSHOT_ALLOWED_SQL])
def test_the_watermark_queries_are_t_sql_without_parameters(statement: sa.TextClause) -> None:
    text = str(statement.compile(dialect=DIALECTS["mssqlpython"]))
    assert not statement.compile(dialect=DIALECTS["mssqlpython"]).params
    for pattern in _NOT_TSQL:
        assert not re.search(pattern, text, re.DOTALL), f"{pattern!r} in {text}"


def test_the_refresh_statements_bind_since_in_the_driver_style() -> None:
    settings = load_settings(source_url=URL, source_timezone="America/Chicago")
    for driver, marker in (("mssqlpython", "%(since)s"), ("pyodbc", "?")):
        compiled = sa.text(settings.refresh_since_statement).compile(dialect=DIALECTS[driver])
        assert str(compiled) == f"EXEC queue.Refresh {marker}"
        assert str(sa.text(settings.refresh_statement).compile(dialect=DIALECTS[driver])) == (
            "EXEC queue.Refresh"
        )


class _Cursor:
    """A DB-API cursor holding the result sets a procedure returned (None: a row count)."""

    def __init__(self, sets: list[list[tuple[int]] | None]) -> None:
        self.sets = sets
        self.read: list[list[tuple[int]]] = []

    @property
    def description(self) -> Any:
        return None if self.sets[0] is None else [("n",)]

    def fetchall(self) -> list[tuple[int]]:
        rows = self.sets[0] or []
        self.read.append(rows)
        return rows

    def nextset(self) -> bool:
        self.sets.pop(0)
        return bool(self.sets)


def test_the_refresh_procedure_runs_without_counts_and_is_read_to_its_end() -> None:
    cursor = _Cursor([[(1,)], None, [(2,), (3,)]])
    sent: list[tuple[str, dict[str, Any]]] = []

    class _Conn:
        def execute(self, statement: sa.TextClause, params: dict[str, Any]) -> Any:
            sent.append((str(statement.compile(dialect=DIALECTS["mssqlpython"])), params))
            return SimpleNamespace(cursor=cursor, close=lambda: None)

    since = {"since": _local(2017, 1, 1)}
    assert run_procedure(cast("sa.Connection", _Conn()), "EXEC queue.Refresh :since", since) == 2
    assert sent == [("SET NOCOUNT ON; EXEC queue.Refresh %(since)s", since)]
    assert cursor.read == [[(1,)], [(2,), (3,)]]
    nothing = SimpleNamespace(cursor=None, close=lambda: None)  # no result: SQLAlchemy closed it

    class _Quiet:
        def execute(self, statement: sa.TextClause, params: dict[str, Any]) -> Any:
            return nothing

    assert run_procedure(cast("sa.Connection", _Quiet()), "EXEC queue.Refresh", {}) == 0


class _Server:
    """An engine whose connections answer the safe-bound and check queries as given."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.url = make_url(URL)
        self.asked: list[str] = []

    def connect(self) -> _Server:
        return self

    def execution_options(self, **options: Any) -> _Server:
        assert options == {"isolation_level": "AUTOCOMMIT"}
        return self

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: sa.TextClause) -> Any:
        name = {CLOCK_SQL: "clock", IN_FLIGHT_SQL: "oldest", SNAPSHOT_ALLOWED_SQL: "snapshot"}[
            statement
        ]
        self.asked.append(name)
        answer = self.answers[name]
        return SimpleNamespace(one=lambda: answer, scalar=lambda: answer)


def _bound(server: _Server, **settings: Any) -> datetime:
    values = {"source_url": URL, "source_timezone": "America/Chicago", **settings}
    return SqlServerBound(cast("sa.Engine", server), Settings(**values)).safe_end()


def test_the_bound_is_the_oldest_transaction_in_flight_less_the_allowance() -> None:
    now = _local(2026, 7, 1, 17, 0, 0, 123456)  # SYSUTCDATETIME(): UTC, naive
    server = _Server(clock=(now, -300, 1), oldest=_local(2026, 7, 1, 11, 59, 0, 3000))
    assert _bound(server) == datetime(2026, 7, 1, 16, 58, 59, 0, UTC)
    assert server.asked == ["clock", "oldest"]
    idle = _Server(clock=(now, -300, 1), oldest=None)
    assert _bound(idle, pg_clock_allowance_seconds=0) == datetime(2026, 7, 1, 17, 0, 0, 120000, UTC)


def test_a_transaction_open_in_the_repeated_hour_bounds_at_its_earlier_reading() -> None:
    now = _local(2026, 11, 1, 7, 40)  # 01:40 CST, the second time 01:40 came
    server = _Server(clock=(now, -360, 1), oldest=_local(2026, 11, 1, 1, 35))
    # 01:35 could be 06:35Z (CDT) or 07:35Z (CST): the bound takes the earlier.
    assert _bound(server, pg_clock_allowance_seconds=0) == datetime(2026, 11, 1, 6, 35, tzinfo=UTC)


def test_without_view_server_state_the_bound_stays_settle_seconds_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = _Server(clock=(_local(2026, 7, 1, 17, 0, 0, 123456), -300, 0))
    assert _bound(server, settle_seconds=5) == datetime(2026, 7, 1, 16, 59, 55, 120000, UTC)
    assert server.asked == ["clock"]  # the transaction views would refuse this login
    assert "GRANT VIEW SERVER STATE" in caplog.text


def test_the_server_clock_must_run_in_source_timezone() -> None:
    now = _local(2026, 7, 1, 17, 0)
    settings = Settings(source_url=URL, source_timezone="America/Chicago")
    check_sqlserver_source(cast("sa.Engine", _Server(clock=(now, -300, 1))), settings)
    with pytest.raises(SourceSchemaError, match=r"UTC-05:00 now.*runs at UTC\+00:00"):
        check_sqlserver_source(cast("sa.Engine", _Server(clock=(now, 0, 1))), settings)
    # In winter Chicago is UTC-6: the check compares the offsets in force now.
    winter = _Server(clock=(_local(2026, 1, 15, 17, 0), -360, 1))
    check_sqlserver_source(cast("sa.Engine", winter), settings)


def test_watermark_mode_needs_snapshot_isolation_allowed() -> None:
    clock = (_local(2026, 7, 1, 17, 0), -300, 1)
    settings = Settings(source_url=URL, source_timezone="America/Chicago", refresh_mode="watermark")
    check_sqlserver_source(cast("sa.Engine", _Server(clock=clock, snapshot=1)), settings)
    with pytest.raises(SourceSchemaError, match="ALLOW_SNAPSHOT_ISOLATION ON"):
        check_sqlserver_source(cast("sa.Engine", _Server(clock=clock, snapshot=0)), settings)
    procedure = Settings(source_url=URL, source_timezone="America/Chicago")
    server = _Server(clock=clock)
    check_sqlserver_source(cast("sa.Engine", server), procedure)
    assert server.asked == ["clock"]


class _Snapshots:
    """An mssql engine that records the isolation level each snapshot is taken in."""

    def __init__(self) -> None:
        self.dialect = DIALECTS["mssqlpython"]
        self.url = make_url(URL)
        self.levels: list[str | None] = []
        self._level: str | None = None

    def connect(self) -> _Snapshots:
        self._level = None
        return self

    def execution_options(self, isolation_level: str) -> _Snapshots:
        self._level = isolation_level
        return self

    def begin(self) -> _Snapshots:
        self.levels.append(self._level)
        return self

    def __enter__(self) -> _Snapshots:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(("mode", "level"), [("watermark", "SNAPSHOT"), ("procedure", None)])
def test_watermark_mode_reads_in_a_snapshot_procedure_mode_in_read_committed(
    mode: str, level: str | None
) -> None:
    engine = _Snapshots()
    settings = Settings(source_url=URL, source_timezone="America/Chicago", refresh_mode=mode)
    reader = SourceReader(cast("sa.Engine", engine), settings)
    with reader.frozen() as snapshot:
        assert isinstance(snapshot, FrozenSnapshot)
    assert engine.levels == [level]  # None: the database's default, READ COMMITTED
