"""The simulator: same seed, same changes, deletes included; its deletes keep orders whole;
what it holds until a commit (producer/sim_writes.py) commits what a commit per action does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.simulator import DELETE_ACTIONS, SimStats, Simulator
from queuestream.sync_schema import Base

UTC_ZONE = ZoneInfo("UTC")


def _clock() -> Callable[[], datetime]:
    """A clock that ticks a millisecond a call, from a fixed start: rows written twice match."""
    ticks = iter(range(10**9))
    start = datetime(2026, 1, 1, 12, tzinfo=UTC_ZONE).replace(tzinfo=None)
    return lambda: start + timedelta(milliseconds=next(ticks))


def _simulate(
    path: Path, actions: int, *, deletes: bool, seed: int = 5, per_transaction: int = 25
) -> SimStats:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        simulator = Simulator(engine, UTC_ZONE, seed=seed, clock=_clock(), deletes=deletes)
        return simulator.run(actions, per_transaction=per_transaction)
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


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10**6),
    per_transaction=st.integers(2, 400),
    deletes=st.booleans(),
)
def test_held_writes_commit_what_a_commit_per_action_does(
    tmp_path: Path, seed: int, per_transaction: int, deletes: bool
) -> None:
    # One action a transaction flushes after every action: the rows as each action wrote
    # them, in order (the reference). Held over many actions, inserts go first and several
    # updates of a row merge: the committed rows must not differ.
    name = f"{seed}-{per_transaction}-{deletes}"
    reference = _simulate(
        tmp_path / f"{name}-one.db", 400, deletes=deletes, seed=seed, per_transaction=1
    )
    held = _simulate(
        tmp_path / f"{name}-many.db",
        400,
        deletes=deletes,
        seed=seed,
        per_transaction=per_transaction,
    )
    assert held == reference
    assert _content(tmp_path / f"{name}-many.db") == _content(tmp_path / f"{name}-one.db")


def test_simulators_sharing_a_source_keep_to_their_own_ids(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    _simulate(path, 300, deletes=False)
    seeded = _content(path)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        # Both start before either writes (max() + 1 would give both the same next ids).
        shares = [
            Simulator(engine, UTC_ZONE, seed=offset, deletes=True, stride=3, offset=offset)
            for offset in (0, 2)
        ]
        for _ in range(3):
            for simulator in shares:
                simulator.run(200, per_transaction=50)
    finally:
        engine.dispose()
    content = _content(path)
    for table in ("Customers", "Orders", "Payments"):
        new = {row[0] for row in content[table]} - {row[0] for row in seeded[table]}
        assert new, table
        assert {key % 3 for key in new} == {0, 2}, f"{table}: ids outside the two shares"
    # What a share touched (updated or deleted) is its own: seeded rows of share 1 are as seeded.
    for table in ("Customers", "CustomerAccounts", "Orders"):
        untouched = [row for row in seeded[table] if row[0] % 3 == 1]
        assert untouched
        assert [row for row in content[table] if row[0] % 3 == 1 and row in seeded[table]] == (
            untouched
        ), table
    assert sum(s.stats.deletes for s in shares) > 0
