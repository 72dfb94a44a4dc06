"""Two members recomputing one customer's balance at once end with the right balance.

A row moved to a customer on another member's partitions makes that member recompute
the first customer's balance too, while the first customer's owner may be doing the
same (consumers/accounting/balances.py). Here, on a real PostgreSQL target, member A
changes an order of customer 1 and holds its transaction open after replacing the
customer's balance; member B moves another order of customer 1 to customer 2 and
reaches customer 1's balance rows while A holds them. Once A commits, B must finish
(not fail on the key of the row A inserted, which would send its refresh down the
one-by-one path and its events to dead letters) and the balances must be what the
invoices say.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from consumers import target_named
from consumers.accounting.schema import CUSTOMER_BALANCES
from consumers.changes import Change
from consumers.target import ApplyReport, Target
from tests.helpers import target_engine, wait_for
from tests.source_changes import change, order_row

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def _order(order_id: int, customer: int, total: str, minutes: int) -> dict[str, Any]:
    amount = Decimal(total)
    modified = T0 + timedelta(minutes=minutes)
    return order_row(
        order_id, customer, created=T0, modified=modified, SubTotal=amount, Total=amount
    )


def _apply(conn: sa.Connection, target: Target, *orders: dict[str, Any]) -> ApplyReport:
    changes: dict[str, list[Change]] = {t: [] for t in target.tables}
    changes["orders"] = [change("orders", row) for row in orders]
    report = ApplyReport()
    target.apply(conn, changes, report)
    return report


def _balances(conn: sa.Connection) -> dict[int, tuple[Decimal, Decimal]]:
    b = CUSTOMER_BALANCES.c
    rows = conn.execute(sa.select(b.customer_id, b.invoiced, b.open_balance))
    return {customer: (invoiced, open_balance) for customer, invoiced, open_balance in rows}


@pytest.fixture
def accounting(postgres_database: Callable[[str], str]) -> Iterator[tuple[Target, sa.Engine]]:
    target = target_named("accounting")
    with target_engine(postgres_database("accounting"), target) as engine:
        yield target, engine


def test_a_balance_replaced_by_two_members_at_once_sums_what_both_committed(
    accounting: tuple[Target, sa.Engine],
) -> None:
    target, engine = accounting
    with engine.begin() as conn:
        _apply(conn, target, _order(1, 1, "10.00", 0), _order(2, 1, "40.00", 0))
        assert _balances(conn) == {1: (Decimal("50.00"), Decimal("50.00"))}

    member_a = engine.connect()
    a_transaction = member_a.begin()
    a_pid = member_a.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    # A: order 1 of customer 1 grows to 15.00; customer 1's balance is replaced, uncommitted.
    _apply(member_a, target, _order(1, 1, "15.00", 1))

    outcome: dict[str, Any] = {}

    def member_b() -> None:
        try:
            with engine.begin() as conn:
                outcome["b_pid"] = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                # B: order 2 moves to customer 2; B recomputes customers 1 and 2.
                outcome["report"] = _apply(conn, target, _order(2, 2, "40.00", 1))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=member_b, daemon=True)
    thread.start()
    try:

        def b_waits_for_a() -> bool:
            if "b_pid" not in outcome:
                return False
            with engine.connect() as watcher:
                blocking = watcher.execute(
                    sa.text("SELECT pg_blocking_pids(:pid)"), {"pid": outcome["b_pid"]}
                ).scalar_one()
            return a_pid in blocking

        wait_for(b_waits_for_a, timeout=30, message="member B waiting on A's balance rows")
        a_transaction.commit()
    finally:
        member_a.close()
        thread.join(60)
    assert not thread.is_alive(), "member B did not finish after A committed"
    assert "error" not in outcome, f"member B failed: {outcome.get('error')!r}"
    report: ApplyReport = outcome["report"]
    assert not report.rejected

    with engine.connect() as conn:
        assert _balances(conn) == {
            1: (Decimal("15.00"), Decimal("15.00")),
            2: (Decimal("40.00"), Decimal("40.00")),
        }
