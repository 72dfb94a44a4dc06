"""Balances kept by deltas stay the sums over the invoices and payments they count.

The accounting target adds to a balance what each row that stayed with its customer
and currency changed, or what a new row adds, and recomputes a customer from its rows
only when a row left it (consumers/accounting/balances.py). Here random sequences of
creates, updates (totals, cancellations, moves to another customer or currency) and
deletes of orders and payments go through the target in random batches, and the
balances must then be exactly what the target's invoices and payments sum to (the
reference: what the recompute over every row makes of them), on SQLite for many
sequences and on PostgreSQL for a few.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.accounting import AccountingTarget
from consumers.accounting.schema import CUSTOMER_BALANCES, INVOICES, PAYMENTS, STATUS_OPEN
from consumers.changes import Change
from consumers.target import ApplyReport
from consumers.target_sql import STAGED_WRITES
from queuestream.databases import create_engine
from tests.source_changes import change, order_row

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CUSTOMERS = (1, 2, 3)
CURRENCIES = ("USD", "EUR")


def _payment(payment_id: int, customer: int, order_id: int, currency: str, amount: Decimal,
             modified: datetime) -> dict[str, Any]:  # fmt: skip
    return {
        "PaymentID": payment_id, "CustomerID": customer, "OrderID": order_id,
        "PaymentTypeID": 1, "PaymentDate": T0, "Amount": amount, "CurrencyCode": currency,
        "AuthorizationCode": None, "Memo": None, "CreatedDate": T0, "ModifiedDate": modified,
    }  # fmt: skip


def _batches(rng: random.Random, steps: int) -> list[dict[str, list[Change]]]:
    """``steps`` random changes of orders and payments, newest version last, in batches."""
    held: dict[tuple[str, int], dict[str, Any]] = {}  # what the source holds now
    changes: list[Change] = []
    for step in range(1, steps + 1):
        modified = T0 + timedelta(seconds=step)
        table = rng.choice(("orders", "payments"))
        key = rng.randint(1, 4)
        stored = held.get((table, key))
        if stored is not None and rng.random() < 0.2:  # deleted
            del held[(table, key)]
            changes.append(change(table, {**stored, "ModifiedDate": modified}, op="d"))
            continue
        customer, currency = rng.choice(CUSTOMERS), rng.choice(CURRENCIES)
        amount = Decimal(rng.randint(1, 5000)) / 100
        if table == "orders":
            row = order_row(
                key, customer, created=T0, modified=modified, CurrencyCode=currency,
                SubTotal=amount, Total=amount, OrderStatusID=rng.choice((1, 2, 5)),
            )  # fmt: skip
        else:
            row = _payment(key, customer, rng.randint(1, 4), currency, amount, modified)
        held[(table, key)] = row
        changes.append(change(table, row, op="u" if stored is not None else "c"))
    batches: list[dict[str, list[Change]]] = []
    while changes:
        size = rng.randint(1, 6)
        batch: dict[str, list[Change]] = defaultdict(list)
        for c in changes[:size]:
            batch[c.table].append(c)
        batches.append(dict(batch))
        changes = changes[size:]
    return batches


def _expected(conn: sa.Connection) -> dict[tuple[int, str], tuple[Decimal, Decimal, int]]:
    """The balances the invoices and payments held make: the recompute's rule."""
    sums: dict[tuple[int, str], list[Any]] = {}
    for customer, currency, status, total, version in conn.execute(
        sa.select(INVOICES.c.customer_id, INVOICES.c.currency, INVOICES.c.status,
                  INVOICES.c.total, INVOICES.c.source_version)
    ):  # fmt: skip
        held = sums.setdefault((customer, currency), [Decimal(0), Decimal(0), version])
        held[0] += total if status == STATUS_OPEN else 0
        held[2] = max(held[2], version)
    for customer, currency, amount, version in conn.execute(
        sa.select(PAYMENTS.c.customer_id, PAYMENTS.c.currency, PAYMENTS.c.amount,
                  PAYMENTS.c.source_version)
    ):  # fmt: skip
        held = sums.setdefault((customer, currency), [Decimal(0), Decimal(0), version])
        held[1] += amount
        held[2] = max(held[2], version)
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def _check(url: str, seed: int, steps: int, *, staged: bool = True) -> None:
    engine = create_engine(url).execution_options(**{STAGED_WRITES: staged})
    target = AccountingTarget()
    try:
        with engine.begin() as conn:
            target.create_schema(conn)
        for batch in _batches(random.Random(seed), steps):
            with engine.begin() as conn:
                target.apply(conn, batch, ApplyReport())
        with engine.connect() as conn:
            expected = _expected(conn)
            held = {
                (r.customer_id, r.currency): (r.invoiced, r.paid, r.source_version)
                for r in conn.execute(sa.select(CUSTOMER_BALANCES))
            }
            opens = {
                (r.customer_id, r.currency): r.open_balance
                for r in conn.execute(sa.select(CUSTOMER_BALANCES))
            }
    finally:
        engine.dispose()
    assert held == expected, seed
    assert all(opens[k] == v[0] - v[1] for k, v in expected.items()), seed


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 40))
def test_balances_are_the_sums_of_their_rows_after_any_changes(
    tmp_path_factory: pytest.TempPathFactory, seed: int, steps: int
) -> None:
    folder = tmp_path_factory.mktemp("deltas")
    _check(f"sqlite:///{folder / 'accounting.db'}", seed, steps)


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_balances_are_the_sums_of_their_rows_on_postgresql(
    postgres_database: Any, seed: int
) -> None:
    _check(postgres_database(f"deltas{seed}"), seed, 60)


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [6, 7])
def test_the_same_with_parameters_instead_of_copy(postgres_database: Any, seed: int) -> None:
    _check(postgres_database(f"arrays{seed}"), seed, 60, staged=False)
