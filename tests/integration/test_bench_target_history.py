"""``make bench-freshness --history N``: an accounting target given years of history.

The rows go into a real PostgreSQL accounting target beside what it holds; the
balances and the invoices' figures must then be what the target's own rules make of
all of them, or the benchmark would measure a target in a state no consumer leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from bench.target_history import add_accounting_history
from consumers.accounting.schema import (
    CUSTOMER_BALANCES,
    INVOICES,
    LEDGER_ACCOUNTS,
    METADATA,
    PAYMENTS,
    STATUS_OPEN,
)
from queuestream.databases import create_engine

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _target(postgres_database: Callable[[str], str]) -> str:
    """An accounting target with two customers and one invoice of its own."""
    url = postgres_database("accounting")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            METADATA.create_all(conn)
            conn.execute(
                sa.insert(LEDGER_ACCOUNTS),
                [
                    {"customer_id": 1, "name": "A", "currency": "USD", "source_version": 1},
                    {"customer_id": 2, "name": "B", "currency": "EUR", "source_version": 1},
                ],
            )
            conn.execute(
                sa.insert(INVOICES).values(
                    order_id=10, customer_id=1, currency="USD", invoice_date=T0,
                    subtotal=Decimal(100), tax=Decimal(0), shipping=Decimal(0),
                    total=Decimal(100), status=STATUS_OPEN, order_status_id=1,
                    amount_paid=Decimal(0), balance_due=Decimal(100), source_version=10**15,
                )
            )  # fmt: skip
            conn.execute(
                sa.insert(CUSTOMER_BALANCES).values(
                    customer_id=1, currency="USD", invoiced=Decimal(100), paid=Decimal(0),
                    open_balance=Decimal(100), source_version=10**15,
                )
            )  # fmt: skip
    finally:
        engine.dispose()
    return url


def test_every_customer_gets_its_history_and_the_figures_follow(
    postgres_database: Callable[[str], str],
) -> None:
    url = _target(postgres_database)
    # customer 3 is not there yet: a load will create it (in USD until then)
    added = add_accounting_history(url, 3, 1, more_customers=1)
    assert (added.customers, added.invoices, added.payments) == (3, 1 + 3 * 3, 3 * 1)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            old = conn.execute(
                sa.select(sa.func.count()).select_from(INVOICES).where(INVOICES.c.order_id < 0)
            ).scalar_one()
            assert old == 9
            balances = {
                (r.customer_id, r.currency): (r.invoiced, r.paid, r.open_balance, r.source_version)
                for r in conn.execute(sa.select(CUSTOMER_BALANCES))
            }
            paid_by_invoice = dict(
                conn.execute(
                    sa.select(PAYMENTS.c.order_id, sa.func.sum(PAYMENTS.c.amount)).group_by(
                        PAYMENTS.c.order_id
                    )
                ).all()
            )
            figures = conn.execute(
                sa.select(INVOICES.c.order_id, INVOICES.c.total, INVOICES.c.amount_paid,
                          INVOICES.c.balance_due)
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    # The invoice of its own still counts, and its version is still the newest.
    assert balances == {
        (1, "USD"): (Decimal("175.00"), Decimal("25.00"), Decimal("150.00"), 10**15),
        (2, "EUR"): (Decimal("75.00"), Decimal("25.00"), Decimal("50.00"), 3),
        (3, "USD"): (Decimal("75.00"), Decimal("25.00"), Decimal("50.00"), 3),
    }
    for order_id, total, amount_paid, balance_due in figures:
        paid = paid_by_invoice.get(order_id, Decimal(0))
        assert (amount_paid, balance_due) == (paid, total - paid), order_id


def test_a_history_with_more_payments_than_invoices_is_refused() -> None:
    with pytest.raises(ValueError, match="no more payments than invoices"):
        add_accounting_history("postgresql://unused/none", 2, 3)


def test_customer_ids_whose_history_ids_would_overflow_are_refused(
    postgres_database: Callable[[str], str],
) -> None:
    url = _target(postgres_database)
    with pytest.raises(ValueError, match="customer ids up to 114,747 only"):
        add_accounting_history(url, 1, 0, more_customers=200_000)
