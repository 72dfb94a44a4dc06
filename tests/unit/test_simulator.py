"""The simulator: same seed, same changes, deletes included; its deletes keep orders whole."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from producer.simulator import DELETE_ACTIONS, SimStats, Simulator
from queuestream.sync_schema import Base

UTC_ZONE = ZoneInfo("UTC")


def _clock() -> Callable[[], datetime]:
    """A clock that ticks a millisecond a call, from a fixed start: rows written twice match."""
    ticks = iter(range(10**9))
    start = datetime(2026, 1, 1, 12, tzinfo=UTC_ZONE).replace(tzinfo=None)
    return lambda: start + timedelta(milliseconds=next(ticks))


def _simulate(path: Path, actions: int, *, deletes: bool, seed: int = 5) -> SimStats:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        simulator = Simulator(engine, UTC_ZONE, seed=seed, clock=_clock(), deletes=deletes)
        return simulator.run(actions, per_transaction=25)
    finally:
        engine.dispose()


def _content(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return {
                name: [
                    tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key))
                ]
                for name, table in Base.metadata.tables.items()
            }
    finally:
        engine.dispose()


def test_same_seed_same_changes_deletes_included(tmp_path: Path) -> None:
    first = _simulate(tmp_path / "a.db", 1500, deletes=True)
    second = _simulate(tmp_path / "b.db", 1500, deletes=True)
    assert first == second
    assert _content(tmp_path / "a.db") == _content(tmp_path / "b.db")
    # Every kind of delete happened, and ordinary activity dominates.
    assert all(first.actions[a] > 0 for a in DELETE_ACTIONS), first.actions
    assert 0 < first.deletes < first.total / 10


def test_without_deletes_nothing_is_deleted(tmp_path: Path) -> None:
    stats = _simulate(tmp_path / "a.db", 600, deletes=False)
    assert stats.deletes == 0
    content = _content(tmp_path / "a.db")
    ids = [row[0] for row in content["Customers"]]
    assert ids == list(range(1, len(ids) + 1)), "a customer was deleted"
    orders = [row[0] for row in content["Orders"]]
    assert orders == list(range(1, len(orders) + 1)), "an order was deleted"


def test_deletes_leave_orders_whole(tmp_path: Path) -> None:
    stats = _simulate(tmp_path / "a.db", 1500, deletes=True, seed=9)
    assert stats.actions["remove_line"] > 0
    content = _content(tmp_path / "a.db")
    orders = Base.metadata.tables["Orders"].c.keys()
    details = Base.metadata.tables["OrderDetails"].c.keys()
    subtotals: dict[int, Decimal] = {}
    for line in content["OrderDetails"]:
        row = dict(zip(details, line, strict=True))
        subtotals[row["OrderID"]] = subtotals.get(row["OrderID"], Decimal(0)) + row["PriceTotal"]
    customers = {row[0] for row in content["Customers"]}
    order_ids = set()
    for values in content["Orders"]:
        order = dict(zip(orders, values, strict=True))
        order_ids.add(order["OrderID"])
        # A removed line's order was recomputed; a deleted order took its lines along.
        assert subtotals.get(order["OrderID"]) == order["SubTotal"], order
        assert order["CustomerID"] in customers, "a customer with orders was deleted"
    assert set(subtotals) <= order_ids, "lines of a deleted order remain"
    for payment in content["Payments"]:
        assert payment[2] in order_ids, "a payment of a deleted order remains"
    for site in content["CustomerSites"] + content["CustomerAccounts"]:
        assert site[0] in customers, "a deleted customer's site or account remains"
