"""Every statement the producer issues to a SQL Server source, compiled by SQLAlchemy's
mssql dialects (mssql-python's and pyodbc's) and checked for T-SQL; the refresh procedure.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from producer.source_reader import FrozenSnapshot
from producer.sqlserver_source import (
    CLOCK_SQL,
    IN_FLIGHT_SQL,
    SNAPSHOT_ALLOWED_SQL,
    key_after,
    run_procedure,
)
from queuestream.settings import Settings, load_settings
from queuestream.tables import TABLES, TABLES_BY_NAME
from tests.unit.sqlserver_support import DIALECTS, URL, local

# -- statements ---------------------------------------------------------------------------


class _Result:
    def __init__(self, statement: Any) -> None:
        self._keys = [c.key for c in getattr(statement, "selected_columns", ())]

    def keys(self) -> list[str]:
        return self._keys

    def partitions(self) -> Iterator[list[Any]]:
        return iter(())

    def all(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


@dataclass(frozen=True)
class _Expanded:
    """A statement compiled with the parameters it was executed with, as sent."""

    text: str
    params: dict[str, Any]

    def __str__(self) -> str:
        return self.text


class _Recorder:
    """A connection that compiles what it is asked to run for one mssql dialect."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self.engine = SimpleNamespace(url=make_url(URL))
        self.compiled: list[sa.engine.Compiled | _Expanded] = []

    def execution_options(self, **_options: Any) -> _Recorder:
        return self

    def execute(self, statement: Any, params: Any = None) -> _Result:
        if params:  # values bound at execution (a list of keys): expanded as the driver gets it
            state = statement.compile(dialect=self.dialect).construct_expanded_state(params)
            self.compiled.append(_Expanded(state.statement, state.parameters))
        else:
            self.compiled.append(
                statement.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
            )
        return _Result(statement)


def _producer_statements(dialect: sa.Dialect) -> list[sa.engine.Compiled | _Expanded]:
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

    since = {"since": local(2017, 1, 1)}
    assert run_procedure(cast("sa.Connection", _Conn()), "EXEC queue.Refresh :since", since) == 2
    assert sent == [("SET NOCOUNT ON; EXEC queue.Refresh %(since)s", since)]
    assert cursor.read == [[(1,)], [(2,), (3,)]]
    nothing = SimpleNamespace(cursor=None, close=lambda: None)  # no result: SQLAlchemy closed it

    class _Quiet:
        def execute(self, statement: sa.TextClause, params: dict[str, Any]) -> Any:
            return nothing

    assert run_procedure(cast("sa.Connection", _Quiet()), "EXEC queue.Refresh", {}) == 0
