"""PostgreSQL's bulk path (binary COPY and one merge) does what the statements before it did.

Both sample targets apply the same random changes, in the same chunks within one
transaction (as the runtime's streaming apply calls them), to two PostgreSQL
databases: one through the staging tables of :mod:`consumers.target_stage`, the
other with ``queuestream_staged_writes`` off (the parameter arrays and the
per-key deletes that came before). The tables and every count the reports hold
(applied per op, stale, notices, rejected) must be the same. Keys, versions and
values come from small sets so that equal versions (the repair rule of op ``r``),
stale events, deletes of rows that are there or not, several versions of a key in
one chunk and chunks that see what an earlier chunk wrote are all frequent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers import TARGET_NAMES, target_named
from consumers.changes import Change
from consumers.target import ApplyReport, Target
from consumers.target_sql import STAGED_WRITES
from queuestream.databases import create_engine
from tests.source_changes import change

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

_versions = st.integers(0, 2).map(lambda m: T0 + timedelta(minutes=m))
# Decimals spelt with an exponent, a negative zero and the largest that fits numeric(16, 2)
# among them: the staging COPY and the parameter arrays must read them alike.
_amounts = st.sampled_from(
    [
        Decimal("1.00"),
        Decimal("2.50"),
        Decimal("40.00"),
        Decimal("4E+1"),
        Decimal("-0.00"),
        Decimal("-0.01"),
        Decimal("99999999999999.99"),
    ]
)
_names = st.sampled_from([None, "Ann", "Bo"])
_ops = st.sampled_from("cudr")


def _stamped(moment: datetime) -> dict[str, Any]:
    return {"CreatedDate": T0, "ModifiedDate": moment}


@st.composite
def _customer(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    return "customers", {
        "CustomerID": draw(st.integers(1, 3)),
        "FirstName": draw(_names),
        "LastName": "Lee",
        "Company": draw(st.sampled_from([None, "Acme"])),
        "Email": draw(st.sampled_from([None, "a@b.c"])),
        "CurrencyCode": draw(st.sampled_from(["usd", "EUR"])),
        **_stamped(draw(_versions)),
    }


@st.composite
def _site(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    return "customer_sites", {
        "CustomerID": draw(st.integers(1, 3)),
        "WebAlias": "w",
        "FirstName": draw(_names),
        "LastName": "Lee",
        "Company": None,
        "Address1": draw(st.sampled_from([None, "1 Main St", "2 High St"])),
        "Address2": None,
        "City": "Town",
        "State": None,
        "Zip": "123",
        "Country": "US",
        **_stamped(draw(_versions)),
    }


@st.composite
def _order(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    total = draw(_amounts)
    return "orders", {
        "OrderID": draw(st.integers(1, 4)),
        "CustomerID": draw(st.integers(1, 3)),
        "OrderStatusID": draw(st.sampled_from([2, 5, 8, 9, 10])),
        "OrderTypeID": 1,
        "OrderDate": T0,
        "CurrencyCode": "USD",
        "WarehouseID": 1,
        "ShipMethodID": draw(st.sampled_from([1, 2])),
        "SubTotal": total,
        "TaxTotal": Decimal("0.00"),
        "ShippingTotal": Decimal("0.00"),
        "Total": total,
        "FirstName": draw(_names),
        "LastName": "Lee",
        "Company": None,
        "Address1": draw(st.sampled_from([None, "9 Side Rd"])),
        "Address2": None,
        "City": None,
        "State": None,
        "Zip": None,
        "Country": None,
        "TrackingNumber1": draw(st.sampled_from([None, "T1"])),
        "ShippedDate": draw(st.sampled_from([None, T0])),
        **_stamped(draw(_versions)),
    }


@st.composite
def _line(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    amount = draw(_amounts)
    return "order_details", {
        "OrderID": draw(st.integers(1, 4)),
        "OrderLine": draw(st.integers(1, 2)),
        "ItemCode": draw(st.sampled_from(["A-1", "B-2"])),
        "ItemDescription": draw(_names),
        "Quantity": Decimal("1.0000"),
        "PriceEach": amount,
        "PriceTotal": amount,
        "Tax": Decimal("0.00"),
        "WeightEach": draw(st.sampled_from([None, Decimal("0.5000")])),
        **_stamped(draw(_versions)),
    }


@st.composite
def _payment(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    return "payments", {
        "PaymentID": draw(st.integers(1, 3)),
        "CustomerID": draw(st.integers(1, 3)),
        "OrderID": draw(st.integers(1, 4)),
        "PaymentTypeID": 1,
        "PaymentDate": T0,
        "Amount": draw(_amounts),
        "CurrencyCode": "USD",
        "AuthorizationCode": draw(st.sampled_from([None, "OK"])),
        "Memo": None,
        **_stamped(draw(_versions)),
    }


_event = st.tuples(st.one_of(_customer(), _site(), _order(), _line(), _payment()), _ops)
#: Chunks of one transaction, each a list of (table, row) with its op.
_chunks = st.lists(st.lists(_event, min_size=1, max_size=25), min_size=2, max_size=4)


def _changes(target: Target, chunk: list[Any]) -> dict[str, list[Change]]:
    found: dict[str, list[Change]] = {t: [] for t in target.tables}
    for (table, row), op in chunk:
        if table in found:
            found[table].append(change(table, row, op=op))
    return found


def _counts(report: ApplyReport) -> tuple[Any, ...]:
    applied = {k: v for k, v in report.applied.items() if v}
    stale = {k: v for k, v in report.stale.items() if v}
    notices = {k: v for k, v in report.notices.items() if v}
    return applied, stale, notices, len(report.rejected)


def _contents(conn: sa.Connection, target: Target) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)))
        for t in target.metadata.sorted_tables
    }


def _apply(
    engine: sa.Engine, target: Target, chunks: list[list[Any]], *, staged: bool
) -> tuple[list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]:
    """Empty the target's tables, apply ``chunks`` in one transaction; counts and tables."""
    reports = []
    with engine.begin() as conn:
        conn.execution_options(**{STAGED_WRITES: staged})
        names = ", ".join(f'"{t.name}"' for t in target.metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names}")
        for chunk in chunks:
            report = ApplyReport()
            target.apply(conn, _changes(target, chunk), report)
            reports.append(_counts(report))
        return reports, _contents(conn, target)


@pytest.fixture(params=TARGET_NAMES)
def engines(
    request: pytest.FixtureRequest, postgres_database: Callable[[str], str]
) -> Iterator[tuple[Target, sa.Engine, sa.Engine]]:
    target = target_named(request.param)
    made = [create_engine(postgres_database(suffix), writer=True) for suffix in ("new", "old")]
    for engine in made:
        with engine.begin() as conn:
            target.create_schema(conn)
    try:
        yield target, made[0], made[1]
    finally:
        for engine in made:
            engine.dispose()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=_chunks)
def test_the_bulk_path_writes_and_counts_as_the_statements_before_it(
    engines: tuple[Target, sa.Engine, sa.Engine], chunks: list[list[Any]]
) -> None:
    target, new, old = engines
    assert _apply(new, target, chunks, staged=True) == _apply(old, target, chunks, staged=False)
