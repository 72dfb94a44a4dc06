"""The shipping target: shipments follow their orders through several batches.

A simulated sync database runs in rounds; after each round the rows that changed
become change events (tests/source_changes.py) and are applied in one transaction,
as the runtime would. The target must then reconcile with the source, hold the
specific shipments the rules call for, refuse redelivered and stale events, and
reject bad records by name while applying the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from consumers.changes import Change, version_of
from consumers.reconcile import Reconciliation, compare
from consumers.shipping import ShippingTarget
from consumers.shipping.schema import (
    ORDER_HEADERS,
    ORDER_LINES,
    SHIP_TO_SITES,
    SHIPMENT_LINES,
    SHIPMENTS,
)
from consumers.target import ApplyReport
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.sync_schema import create_source_schema, source_table
from tests.helpers import target_engine
from tests.source_changes import SteppingClock, change, order_row, source_changes

ZONE = ZoneInfo("UTC")
ROUNDS = 8
ACTIONS_PER_ROUND = 100
SEED = 4
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class _Run:
    """A simulated source, a shipping target, and what happened round by round."""

    source: sa.Engine
    target: sa.Engine
    shipping: ShippingTarget = field(default_factory=ShippingTarget)
    batches: list[dict[str, list[Change]]] = field(default_factory=list)
    reports: list[ApplyReport] = field(default_factory=list)
    statuses: list[dict[int, int]] = field(default_factory=list)  # per round: order -> status


def _apply(run: _Run, changes: dict[str, list[Change]]) -> ApplyReport:
    report = ApplyReport()
    with run.target.begin() as conn:
        run.shipping.apply(conn, changes, report)
    return report


def _simulate(source_url: str, target_url: str, seed: int) -> _Run:
    source = create_engine(source_url, writer=True)
    create_source_schema(source)
    target = create_engine(target_url)
    run = _Run(source, target)
    with target.begin() as conn:
        run.shipping.create_schema(conn)
        run.shipping.create_schema(conn)  # idempotent
    simulator = Simulator(source, ZONE, seed=seed, clock=SteppingClock(T0))
    done = 0
    for _ in range(ROUNDS):
        simulator.run(ACTIONS_PER_ROUND, per_transaction=5)
        fresh = {
            table: [c for c in found if c.version > done]
            for table, found in source_changes(source, ZONE, run.shipping.tables).items()
        }
        done = max((c.version for found in fresh.values() for c in found), default=done)
        run.batches.append(fresh)
        run.reports.append(_apply(run, fresh))
        orders = source_table("orders")
        with source.connect() as conn:
            query = sa.select(orders.c.OrderID, orders.c.OrderStatusID)
            run.statuses.append({k: v for k, v in conn.execute(query)})
    return run


def _table(engine: sa.Engine, table: sa.Table) -> dict[Any, dict[str, Any]]:
    key = [c.name for c in table.primary_key.columns]
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    return {tuple(r[k] for k in key) if len(key) > 1 else r[key[0]]: r for r in rows}


def _snapshot(engine: sa.Engine) -> dict[str, Any]:
    tables = (SHIP_TO_SITES, ORDER_HEADERS, ORDER_LINES, SHIPMENTS, SHIPMENT_LINES)
    return {t.name: _table(engine, t) for t in tables}


def _reconcile(run: _Run) -> Reconciliation:
    with run.source.connect() as src, run.target.connect() as dst:
        return compare("shipping", run.shipping.expected(src, ZONE), run.shipping.actual(dst))


def _assert_reconciles(run: _Run) -> None:
    result = _reconcile(run)
    assert result.ok, result.as_dict()


@pytest.fixture
def run(sqlite_url: str, tmp_path: Path) -> Iterator[_Run]:
    found = _simulate(sqlite_url, f"sqlite:///{tmp_path / 'shipping.db'}", seed=SEED)
    try:
        yield found
    finally:
        found.source.dispose()
        found.target.dispose()


def _assert_shipment_facts(run: _Run) -> None:
    shipments = _table(run.target, SHIPMENTS)
    lines = _table(run.target, SHIPMENT_LINES)
    source_orders = {r["OrderID"]: r for r in _table(run.source, source_table("orders")).values()}
    sites = {
        r["CustomerID"]: r for r in _table(run.source, source_table("customer_sites")).values()
    }
    final = run.statuses[-1]
    seen_at_round_end = {
        oid for statuses in run.statuses for oid, s in statuses.items() if s in (8, 9, 10)
    }

    shipped = [oid for oid, s in final.items() if s == 10]
    assert shipped, "the simulation shipped nothing: raise ROUNDS or ACTIONS_PER_ROUND"
    for oid in shipped:
        assert shipments[oid]["status"] == "shipped"
        assert shipments[oid]["tracking_number"] == source_orders[oid]["TrackingNumber1"]
        assert shipments[oid]["tracking_number"].startswith("1Z")
        assert shipments[oid]["shipped_at"] is not None

    printed_then_canceled = [
        oid
        for oid, s in final.items()
        if s == 5 and any(statuses.get(oid) == 9 for statuses in run.statuses)
    ]
    assert printed_then_canceled, "no order was cancelled while printed: change the seed"
    for oid in printed_then_canceled:
        assert shipments[oid]["status"] == "canceled"
        assert not shipments[oid]["cancel_requested"]

    # Pending, or cancelled before the target saw it shippable (at a round's end): no
    # shipment. (Pending -> Accepted -> Canceled within one round is never seen Accepted.)
    never_shippable = [oid for oid, s in final.items() if s == 5 and oid not in seen_at_round_end]
    pending = [oid for oid, s in final.items() if s == 2]
    assert never_shippable and pending
    for oid in [*pending, *never_shippable]:
        assert oid not in shipments, (oid, shipments[oid])

    from_site = [
        oid
        for oid, s in shipments.items()
        if s["status"] in ("ready", "printed") and source_orders[oid]["Address1"] is None
    ]
    assert from_site, "no open shipment addressed to the customer's site"
    for oid in from_site:
        site = sites[source_orders[oid]["CustomerID"]]
        assert shipments[oid]["ship_to_source"] == "site"
        assert shipments[oid]["ship_to_address1"] == site["Address1"]
        assert shipments[oid]["ship_to_city"] == site["City"]
    own = [oid for oid in shipments if source_orders[oid]["Address1"] is not None]
    assert own
    for oid in own:
        assert shipments[oid]["ship_to_address1"] == source_orders[oid]["Address1"]

    details = _table(run.source, source_table("order_details"))
    for oid in shipments:
        mine = {line for (o, line) in lines if o == oid}
        assert mine, f"shipment {oid} has no lines"
        assert mine == {line for (o, line) in details if o == oid}


def test_shipments_follow_orders_through_batches(run: _Run) -> None:
    _assert_reconciles(run)
    _assert_shipment_facts(run)
    # Shipments moved through their states over several batches.
    applied: Counter[str] = Counter()
    for report in run.reports:
        applied.update(report.applied)
    assert applied["shipments.c"] > 0 and applied["shipments.u"] > 0
    assert all(not r.rejected for r in run.reports)


def test_replaying_changes_changes_nothing(run: _Run) -> None:
    before = _snapshot(run.target)
    for batch in run.batches:
        report = _apply(run, batch)
        assert not report.applied, report.applied
        assert sum(report.stale.values()) == sum(len(b) for b in batch.values())
    assert _snapshot(run.target) == before
    _assert_reconciles(run)


def test_an_older_version_after_a_newer_one_changes_nothing(run: _Run) -> None:
    before = _snapshot(run.target)
    # The first batch again, after the later ones: every event in it is older now.
    report = _apply(run, run.batches[0])
    assert not report.applied
    # The earlier versions of the shipped orders (Pending, Accepted, Printed), and of sites.
    shipped = [k for k, s in before["shipments"].items() if s["status"] == "shipped"]
    older = {
        "orders": [c for b in run.batches[:-1] for c in b["orders"] if c.key["OrderID"] in shipped],
        "customer_sites": [c for b in run.batches[:-1] for c in b["customer_sites"]],
    }
    report = _apply(run, older)
    assert not report.applied, report.applied
    assert report.stale["orders"] > 0
    assert _snapshot(run.target) == before


def test_compare_detects_a_tampered_tracking_number(run: _Run) -> None:
    _assert_reconciles(run)
    with run.target.begin() as conn:
        victim = conn.execute(
            sa.select(SHIPMENTS.c.order_id).where(SHIPMENTS.c.status == "shipped").limit(1)
        ).scalar_one()
        conn.execute(
            sa.update(SHIPMENTS)
            .where(SHIPMENTS.c.order_id == victim)
            .values(tracking_number="1ZTAMPERED")
        )
    result = _reconcile(run)
    assert not result.ok
    check = next(c for c in result.checks if c.table == "shipments")
    assert check.different == [(victim,)]
    assert all(c.ok for c in result.checks if c.table != "shipments")


# -- rules, one at a time, with hand-made events -------------------------------------------
def _at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def _site(customer: int, minute: int, **values: Any) -> Change:
    row = {
        "CustomerID": customer,
        "WebAlias": f"c{customer}",
        "FirstName": "Ava",
        "LastName": "Smith",
        "Company": None,
        "Email": None,
        "Phone": None,
        "Address1": "1 Main St",
        "Address2": None,
        "City": "Dallas",
        "State": "TX",
        "Zip": "75201",
        "Country": "US",
        "CreatedDate": _at(0),
        "ModifiedDate": _at(minute),
        **values,
    }
    return change("customer_sites", row)


def _order(order: int, status: int, minute: int, customer: int = 1, **values: Any) -> Change:
    values = {"OrderStatusID": status, "CurrencyCode": "usd", "ShipMethodID": 2, **values}
    row = order_row(order, customer, created=_at(0), modified=_at(minute), **values)
    return change("orders", row)


def _line(order: int, line: int, minute: int = 0, **values: Any) -> Change:
    row = {
        "OrderID": order,
        "OrderLine": line,
        "ItemCode": "TEA-20",
        "ItemDescription": "Herbal tea, 20 bags",
        "Quantity": Decimal(2),
        "PriceEach": Decimal("12.7500"),
        "PriceTotal": Decimal("25.50"),
        "Tax": Decimal("1.85"),
        "WeightEach": Decimal("0.1000"),
        "CreatedDate": _at(0),
        "ModifiedDate": _at(minute),
        **values,
    }
    return change("order_details", row)


def _shipped(order: int, minute: int, status: int = 10, **values: Any) -> Change:
    return _order(
        order,
        status,
        minute,
        TrackingNumber1=f"1Z{order:010d}",
        ShippedDate=_at(minute),
        **values,
    )


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[sa.Engine, ShippingTarget]]:
    shipping = ShippingTarget()
    with target_engine(f"sqlite:///{tmp_path / 'shipping.db'}", shipping) as engine:
        yield engine, shipping


def _batch(
    target: tuple[sa.Engine, ShippingTarget], *changes: Change
) -> tuple[ApplyReport, dict[Any, dict[str, Any]]]:
    engine, shipping = target
    grouped: dict[str, list[Change]] = {t: [] for t in shipping.tables}
    for c in changes:
        grouped[c.table].append(c)
    report = ApplyReport()
    with engine.begin() as conn:
        shipping.apply(conn, grouped, report)
    return report, _table(engine, SHIPMENTS)


def test_status_rules(target: tuple[sa.Engine, ShippingTarget]) -> None:
    orders = (1, 2, 3, 4, 5)
    _batch(target, _site(1, 1), *(_order(o, 2, 1) for o in orders), *(_line(o, 1) for o in orders))
    _, shipments = _batch(target, _order(1, 8, 2), _order(2, 8, 2), _order(3, 5, 2))
    assert shipments[1]["status"] == shipments[2]["status"] == "ready"
    assert 3 not in shipments  # cancelled while pending: no shipment
    # One batch carrying two versions: Accepted, then Canceled. The same as two batches.
    _, shipments = _batch(target, _order(4, 8, 3), _order(4, 5, 4), _order(5, 9, 3))
    assert shipments[4]["status"] == "canceled"
    assert shipments[4]["created_version"] == version_of(_at(3))
    assert shipments[5]["status"] == "printed"
    _, shipments = _batch(target, _order(1, 9, 5), _order(2, 9, 5), _order(5, 5, 5))
    assert shipments[5]["status"] == "canceled"  # cancelled while printed
    _, shipments = _batch(target, _shipped(1, 6), _shipped(2, 6))
    assert shipments[1]["status"] == "shipped"
    assert shipments[1]["tracking_number"] == "1Z0000000001"
    assert shipments[1]["shipped_at"].replace(tzinfo=UTC) == _at(6)
    # The customer moves: open shipments follow, shipped and canceled ones do not.
    _batch(target, _site(1, 7, Address1="2 New Rd"), _order(7, 8, 7), _line(7, 1))
    # Cancelled after shipping: stays shipped, the cancellation is flagged.
    report, shipments = _batch(target, _shipped(1, 8, status=5), _order(5, 5, 8, Notes="x"))
    assert shipments[1]["status"] == "shipped" and shipments[1]["cancel_requested"]
    assert shipments[1]["tracking_number"] == "1Z0000000001"
    assert report.applied == {"order_headers.u": 2, "shipments.u": 2}
    assert [shipments[o]["ship_to_address1"] for o in (1, 5, 7)] == [
        "1 Main St",
        "1 Main St",
        "2 New Rd",
    ]
    # Never un-shipped, even if the source moves the order back and clears its dates.
    _, shipments = _batch(target, _order(2, 9, 8))
    assert shipments[2]["status"] == "shipped" and not shipments[2]["cancel_requested"]
    assert shipments[2]["tracking_number"] == "1Z0000000002"
    assert shipments[2]["shipped_at"] is not None
    # First seen Canceled with a ShippedDate: it was cancelled after shipping.
    _, shipments = _batch(target, _order(6, 2, 1), _line(6, 1))
    assert 6 not in shipments
    _, shipments = _batch(target, _shipped(6, 7, status=5))
    assert shipments[6]["status"] == "shipped" and shipments[6]["cancel_requested"]
    # A cancelled shipment reopens when its order is accepted again.
    _, shipments = _batch(target, _order(4, 8, 8))
    assert shipments[4]["status"] == "ready"
    # An order deleted before shipping cancels its shipment (it used to take it along).
    report, shipments = _batch(target, replace(_order(4, 8, 9), op="d", row=None))
    assert shipments[4]["status"] == "canceled"
    assert report.applied == {"order_headers.d": 1, "shipments.u": 1}
    assert not report.notices
    # One deleted after shipping keeps its shipment as it is, and is reported.
    report, shipments = _batch(target, replace(_shipped(2, 9), op="d", row=None))
    assert shipments[2]["status"] == "shipped"
    assert report.applied == {"order_headers.d": 1}
    assert report.notices == {"shipments.shipped_order_deleted": 1}


def test_site_address_moves_open_shipments_only(target: tuple[sa.Engine, ShippingTarget]) -> None:
    own: dict[str, Any] = {"Address1": "9 Own Rd", "City": "Provo", "Country": "US"}
    _batch(
        target,
        _site(1, 1),
        _order(10, 8, 2),  # open, addressed to the site
        _shipped(11, 2),  # shipped to the site: frozen
        _order(12, 9, 2, **own),  # open, its own address
        _order(13, 8, 2, customer=2),  # another customer, whose site has not arrived
        *(_line(o, 1) for o in (10, 11, 12, 13)),
    )
    report, shipments = _batch(target, _site(1, 3, Address1="77 Lake Blvd", City="Irvine"))
    assert report.applied == {"ship_to_sites.u": 1, "shipments.u": 1}
    assert shipments[10]["ship_to_address1"] == "77 Lake Blvd"
    assert shipments[10]["ship_to_city"] == "Irvine"
    assert shipments[11]["ship_to_address1"] == "1 Main St"
    assert shipments[12]["ship_to_address1"] == "9 Own Rd"
    assert shipments[12]["ship_to_source"] == "order"
    assert shipments[13]["ship_to_source"] == "none"
    assert shipments[13]["ship_to_address1"] is None
    _, shipments = _batch(target, _site(2, 4, Address1="5 Elm St"))
    assert shipments[13]["ship_to_source"] == "site"
    assert shipments[13]["ship_to_address1"] == "5 Elm St"


def test_a_bad_record_is_rejected_by_name_and_the_rest_applied(
    target: tuple[sa.Engine, ShippingTarget],
) -> None:
    report, shipments = _batch(
        target,
        _site(1, 1, City="X" * 51),
        _site(2, 1),
        _order(20, 8, 2, customer=2),
        _order(21, 42, 2, customer=2),
        _order(22, 8, 2, customer=2, Company="C" * 101),
        _order(23, 8, 2, customer=2, Address2="Apt\x001"),
        _line(20, 1),
        _line(20, 2, ItemDescription="D" * 201),
    )
    rejected = {(r.error.table, str(r.error.key), r.error.column) for r in report.rejected}
    assert rejected == {
        ("customer_sites", "{'CustomerID': 1}", "City"),
        ("orders", "{'OrderID': 21}", "OrderStatusID"),
        ("orders", "{'OrderID': 22}", "Company"),
        ("orders", "{'OrderID': 23}", "Address2"),
        ("order_details", "{'OrderID': 20, 'OrderLine': 2}", "ItemDescription"),
    }
    assert "51 characters do not fit the target column of 50" in str(report.rejected[0].error)
    assert set(shipments) == {20}
    assert shipments[20]["ship_to_address1"] == "1 Main St"
    assert report.applied == {
        "ship_to_sites.u": 1,
        "order_headers.u": 1,
        "order_lines.u": 1,
        "shipments.c": 1,
    }


@pytest.mark.postgres
def test_shipments_on_postgresql(postgres_url: str, sqlite_url: str) -> None:
    found = _simulate(sqlite_url, postgres_url, seed=SEED)
    try:
        _assert_reconciles(found)
        _assert_shipment_facts(found)
        before = _snapshot(found.target)
        for batch in found.batches:
            assert not _apply(found, batch).applied
        assert _snapshot(found.target) == before
    finally:
        found.source.dispose()
        found.target.dispose()
