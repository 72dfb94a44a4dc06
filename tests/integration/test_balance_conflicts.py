"""Two members recomputing one customer's balance at once end with the right balance.

A row moved to a customer on another member's partitions makes that member recompute
the first customer's balance too, while the first customer's owner may be doing the
same (consumers/accounting/balances.py). Here, on a real PostgreSQL target, member A
changes an order of customer 1 and holds its transaction open after replacing the
customer's balance; member B moves another order of customer 1 to customer 2 and
reaches customer 1's balance rows while A holds them. Once A commits, B must finish
(not fail on the key of the row A inserted, which would send its refresh down the
one-by-one path and its events to dead letters) and the balances must be what the
invoices say. The same holds when both move the same order: B reads whom it belonged
to only once A has committed.
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
from consumers.accounting.schema import CUSTOMER_BALANCES, INVOICES, PAYMENTS
from consumers.changes import Change
from consumers.target import ApplyReport, Target
from queuestream.errors import RetriableError
from tests.helpers import target_engine, wait_for
from tests.source_changes import change, order_row

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def _order(order_id: int, customer: int, total: str, minutes: int) -> tuple[str, dict[str, Any]]:
    amount = Decimal(total)
    modified = T0 + timedelta(minutes=minutes)
    row = order_row(
        order_id, customer, created=T0, modified=modified, SubTotal=amount, Total=amount
    )
    return "orders", row


def _payment(
    payment_id: int, customer: int, order_id: int, amount: str
) -> tuple[str, dict[str, Any]]:
    return "payments", {
        "PaymentID": payment_id,
        "CustomerID": customer,
        "OrderID": order_id,
        "PaymentTypeID": 1,
        "PaymentDate": T0,
        "Amount": Decimal(amount),
        "CurrencyCode": "USD",
        "AuthorizationCode": None,
        "Memo": None,
        "CreatedDate": T0,
        "ModifiedDate": T0,
    }


def _apply(
    conn: sa.Connection, target: Target, *rows: tuple[str, dict[str, Any]], last: bool = True
) -> ApplyReport:
    """One batch (``last``), or one part of it, as the runtime applies it: what ends a
    batch (:meth:`Target.before_commit`) too, ready to commit."""
    changes: dict[str, list[Change]] = {t: [] for t in target.tables}
    for table, row in rows:
        changes[table].append(change(table, row))
    report = ApplyReport()
    target.apply(conn, changes, report)
    if last:
        target.before_commit(conn)
    return report


def _unpaid_payments(conn: sa.Connection) -> list[tuple[int, Decimal, Decimal]]:
    """Invoices whose amount_paid is not the sum of their payments (in their currency)."""
    i, p = INVOICES.c, PAYMENTS.c
    paid = (
        sa.select(sa.func.coalesce(sa.func.sum(p.amount), 0))
        .where(p.order_id == i.order_id, p.currency == i.currency)
        .scalar_subquery()
    )
    rows = conn.execute(sa.select(i.order_id, i.amount_paid, paid).where(i.amount_paid != paid))
    return [tuple(row) for row in rows]


def _balances(conn: sa.Connection) -> dict[int, tuple[Decimal, Decimal]]:
    b = CUSTOMER_BALANCES.c
    rows = conn.execute(sa.select(b.customer_id, b.invoiced, b.open_balance))
    return {customer: (invoiced, open_balance) for customer, invoiced, open_balance in rows}


@pytest.fixture
def accounting(postgres_database: Callable[[str], str]) -> Iterator[tuple[Target, sa.Engine]]:
    target = target_named("accounting")
    with target_engine(postgres_database("accounting"), target) as engine:
        yield target, engine


#: (invoiced, open_balance) of a customer's balance
Figures = tuple[Decimal, Decimal]
_SEEDED: dict[int, Figures] = {1: (Decimal("50.00"), Decimal("50.00"))}


@pytest.mark.parametrize(
    ("a_changes", "b_changes", "expected"),
    [
        pytest.param(
            _order(1, 1, "15.00", 1),  # A: order 1 of customer 1 grows to 15.00
            _order(2, 2, "40.00", 1),  # B: order 2 moves to customer 2
            {1: (Decimal("15.00"), Decimal("15.00")), 2: (Decimal("40.00"), Decimal("40.00"))},
            id="both-write-the-customers-row",
        ),
        pytest.param(
            _order(1, 3, "10.00", 1),  # A: order 1 moves to customer 3 (found by a review)
            _order(2, 2, "40.00", 1),  # B: order 2 moves to customer 2
            {2: (Decimal("40.00"), Decimal("40.00")), 3: (Decimal("10.00"), Decimal("10.00"))},
            id="the-second-leaves-it-without-a-row",
        ),
        pytest.param(
            _order(5, 5, "20.00", 1),  # A: customer 5's first order
            _payment(1, 5, 99, "5.00"),  # B: a payment of customer 5 before its invoice
            {**_SEEDED, 5: (Decimal("20.00"), Decimal("15.00"))},
            id="both-insert-a-new-customers-row",
        ),
        pytest.param(
            _order(2, 3, "40.00", 1),  # A: order 2 moves to customer 3
            _order(2, 2, "40.00", 2),  # B: its next version moves it on to customer 2
            {1: (Decimal("10.00"), Decimal("10.00")), 2: (Decimal("40.00"), Decimal("40.00"))},
            id="both-move-the-same-order",
        ),
        pytest.param(
            _order(7, 3, "30.00", 1),  # A: order 7 arrives, of customer 3
            _order(7, 2, "30.00", 2),  # B: its next version moves it to customer 2
            {**_SEEDED, 2: (Decimal("30.00"), Decimal("30.00"))},
            id="one-moves-an-order-the-other-inserts",
        ),
        pytest.param(
            _order(8, 3, "30.00", 1),  # A: order 8 arrives, of customer 3
            _payment(2, 2, 8, "10.00"),  # B: customer 2 pays 10.00 on it
            {
                **_SEEDED,
                2: (Decimal("0.00"), Decimal("-10.00")),
                3: (Decimal("30.00"), Decimal("30.00")),
            },
            id="one-pays-an-invoice-the-other-inserts",
        ),
    ],
)
def test_a_balance_replaced_by_two_members_at_once_sums_what_both_committed(
    accounting: tuple[Target, sa.Engine],
    a_changes: tuple[str, dict[str, Any]],
    b_changes: tuple[str, dict[str, Any]],
    expected: dict[int, Figures],
) -> None:
    """Customer 1 holds orders 1 (10.00) and 2 (40.00). A applies its change and holds
    its transaction open; B applies its own and reaches the same customer's balance
    while A holds it. In the second case customer 1 has no invoice left once both
    committed: B's sums write no row for it, so only B's DELETE can remove the one A
    inserted, and it must see it. In the third, customer 5 had no balance row to lock:
    both insert one. In the fourth, both move order 2: B must read the customer A moved
    it to (3), not the one before (1), or customer 3's balance keeps the order. In the
    fifth, B finds no order 7 to read its owner from, and its upsert then updates the
    one A inserted: B's batch must be rolled back and applied again (as the runtime
    does with a RetriableError), reading customer 3, or customer 3 keeps the order. In
    the sixth, B applies a payment to the invoice A is inserting: B must wait for A and
    then apply it, or the invoice never counts it. In every case each invoice's
    amount_paid is the sum of its payments."""
    target, engine = accounting
    with engine.begin() as conn:
        _apply(conn, target, _order(1, 1, "10.00", 0), _order(2, 1, "40.00", 0))
        assert _balances(conn) == _SEEDED

    member_a = engine.connect()
    a_transaction = member_a.begin()
    a_pid = member_a.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    _apply(member_a, target, a_changes)  # its balances replaced, uncommitted

    outcome: dict[str, Any] = {}

    def member_b() -> None:
        try:
            for _attempt in range(3):  # as the runtime applies a batch again
                try:
                    with engine.begin() as conn:
                        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                        outcome["b_pid"] = pid
                        outcome["report"] = _apply(conn, target, b_changes)
                    return
                except RetriableError as exc:
                    outcome.setdefault("retried", []).append(exc)
            outcome["error"] = AssertionError("member B retried three times")
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=member_b, daemon=True)
    thread.start()
    try:

        def b_waits_for_a() -> bool:
            if not thread.is_alive():
                return True  # done without waiting: the outcome below tells
            if "b_pid" not in outcome:
                return False
            with engine.connect() as watcher:
                blocking = watcher.execute(
                    sa.text("SELECT pg_blocking_pids(:pid)"), {"pid": outcome["b_pid"]}
                ).scalar_one()
            waited = a_pid in blocking
            outcome["waited"] = waited
            return waited

        wait_for(b_waits_for_a, timeout=30, message="member B waiting on A's balances")
        a_transaction.commit()
    finally:
        member_a.close()
        thread.join(60)
    assert not thread.is_alive(), "member B did not finish after A committed"
    assert "error" not in outcome, f"member B failed: {outcome.get('error')!r}"
    report: ApplyReport = outcome["report"]
    assert not report.rejected

    with engine.connect() as conn:
        assert _balances(conn) == expected
        assert _unpaid_payments(conn) == []
    assert outcome.get("waited"), "member B did not wait for A"


def test_payments_applied_before_their_orders_in_parts_do_not_hold_other_members(
    accounting: tuple[Target, sa.Engine],
) -> None:
    """A refresh applied in parts may write its payments in a part before their orders
    (consumers/streaming.py). Member A does, and holds its transaction open: its
    payments' invoices are not there yet, but A inserts them itself in a later part,
    so another member inserting invoices meanwhile (B, order 300 in the same lock
    bucket as A's order 44) must not wait for A's commit. Once A has written its
    orders and committed, every invoice counts its payments."""
    target, engine = accounting
    member_a = engine.connect()
    a_transaction = member_a.begin()
    try:
        _apply(member_a, target, _payment(1, 1, 44, "10.00"), last=False)
        finished = threading.Event()

        def member_b() -> None:
            with engine.begin() as conn:
                _apply(conn, target, _order(44 + 256, 2, "30.00", 0), _payment(2, 2, 300, "5.00"))
            finished.set()

        thread = threading.Thread(target=member_b, daemon=True)
        thread.start()
        waited = not finished.wait(15)  # with A's exclusive lock taken at once: until A ends
        _apply(member_a, target, _order(44, 1, "10.00", 0))
        a_transaction.commit()
        thread.join(30)
    finally:
        member_a.close()
    assert not waited, "member B waited for A's transaction"
    with engine.connect() as conn:
        assert _unpaid_payments(conn) == []
        paid = dict(conn.execute(sa.select(INVOICES.c.order_id, INVOICES.c.amount_paid)).all())
    assert paid == {44: Decimal("10.00"), 300: Decimal("5.00")}
