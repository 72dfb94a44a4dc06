"""An accounting target with years of history, for ``make bench-freshness --history N``.

The freshness benchmark starts from empty targets: a customer has about five
invoices and payments when a refresh touches it. A target that has run for years
holds many more, and the accounting target recomputes a touched customer's balance
from all of them (:mod:`consumers.accounting.balances`), so its apply grows with that
history. :func:`add_accounting_history` gives every customer of a live accounting
target ``invoices`` old open invoices and ``payments`` old payments (each paying one
of those invoices in full), then brings every balance and invoice figure up to date
with the target's own code, and analyses the tables. The rows are in the target only,
under negative ids the source never uses (``queuestream verify`` would count them as
extra): what they change is the size of what the target's statements read.

The customers a load touches are mostly ones it creates (the simulator's ids count up
from the highest one), so the history goes to the ``more_customers`` ids after the
highest held too, in USD: when the load creates such a customer, its history is
already in the target, as a customer who came back after years would have it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from consumers.accounting.balances import recompute_balances
from consumers.accounting.schema import (
    CUSTOMER_BALANCES,
    INVOICES,
    LEDGER_ACCOUNTS,
    PAYMENTS,
    STATUS_OPEN,
)
from queuestream.databases import create_engine

__all__ = ["History", "add_accounting_history"]

#: Each old invoice's total (and the amount of the payment made on it).
_TOTAL = "25.00"
#: When the old history starts (its invoices a day apart): before any simulated row.
_START = "2015-01-01 00:00:00+00"
#: Old rows' ids: below this, negative, so that no source id meets them.
_BASE = -1_000_000_000
#: Ids a customer's history may take (invoices and payments each).
_PER_CUSTOMER = 10_000
#: Customer ids whose history ids stay within a 32-bit key (below 2**31 in size).
_MOST_CUSTOMERS = (2**31 + _BASE) // _PER_CUSTOMER

#: The customers given a history: those of the target, and the ids after them to :upto.
_CUSTOMERS = f"""
    SELECT customer_id, currency FROM {LEDGER_ACCOUNTS.name}
    UNION ALL
    SELECT c, 'USD' FROM generate_series(CAST(:first AS int), CAST(:upto AS int)) AS c
"""

# One old invoice per customer and number, paid in full for the first ``payments``.
_INVOICES = sa.text(
    f"""
    INSERT INTO {INVOICES.name} (order_id, customer_id, currency, invoice_date, subtotal, tax,
        shipping, total, status, order_status_id, amount_paid, balance_due, source_version)
    SELECT :base - a.customer_id * :per - g, a.customer_id, a.currency,
        timestamptz '{_START}' + g * interval '1 day', :total, 0, 0, :total, :open, 4,
        CASE WHEN g <= :payments THEN CAST(:total AS numeric) ELSE 0 END,
        CASE WHEN g <= :payments THEN 0 ELSE CAST(:total AS numeric) END,
        g
    FROM ({_CUSTOMERS}) AS a, generate_series(1, CAST(:invoices AS int)) AS g
    """
)
_PAYMENTS = sa.text(
    f"""
    INSERT INTO {PAYMENTS.name} (payment_id, customer_id, order_id, payment_date, amount,
        currency, authorization_code, source_version)
    SELECT :base - a.customer_id * :per - g, a.customer_id, :base - a.customer_id * :per - g,
        timestamptz '{_START}' + g * interval '1 day', :total, a.currency, NULL, g
    FROM ({_CUSTOMERS}) AS a, generate_series(1, CAST(:payments AS int)) AS g
    """
)


@dataclass(frozen=True)
class History:
    """What :func:`add_accounting_history` added, and how long it took."""

    invoices_per_customer: int
    payments_per_customer: int
    customers: int
    invoices: int  # the target's invoices afterwards, old and new
    payments: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 1)}


def add_accounting_history(
    url: str, invoices: int, payments: int, more_customers: int = 0
) -> History:
    """Give every customer of the accounting target at ``url`` (PostgreSQL), and the
    ``more_customers`` ids after the highest, ``invoices`` old invoices and ``payments``
    old payments, in one transaction; then analyse."""
    if invoices < 1 or not 0 <= payments <= invoices or invoices >= _PER_CUSTOMER:
        msg = (
            f"history: {invoices} invoices and {payments} payments a customer: at least one "
            f"invoice, fewer than {_PER_CUSTOMER:,}, and no more payments than invoices"
        )
        raise ValueError(msg)
    started = time.monotonic()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            held = [c for (c,) in conn.execute(sa.select(LEDGER_ACCOUNTS.c.customer_id))]
            if held and min(held) < 0:
                msg = "history: the target has negative customer ids; it takes none"
                raise ValueError(msg)
            first = max(held, default=0) + 1
            customers = sorted(held) + list(range(first, first + more_customers))
            if customers and customers[-1] >= _MOST_CUSTOMERS:
                msg = f"history: customer ids up to {_MOST_CUSTOMERS - 1:,} only (their ids)"
                raise ValueError(msg)
            params = {
                "first": first,
                "upto": first + more_customers - 1,
                "base": _BASE,
                "per": _PER_CUSTOMER,
                "total": _TOTAL,
                "open": STATUS_OPEN,
                "invoices": invoices,
                "payments": payments,
            }
            conn.execute(_INVOICES, params)
            if payments:
                conn.execute(_PAYMENTS, params)
            recompute_balances(conn, customers)  # the target's own code
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {INVOICES.name}")
            conn.exec_driver_sql(f"VACUUM ANALYZE {PAYMENTS.name}")
            conn.exec_driver_sql(f"VACUUM ANALYZE {CUSTOMER_BALANCES.name}")
            count = sa.select(sa.func.count())
            held_invoices = conn.execute(count.select_from(INVOICES)).scalar_one()
            held_payments = conn.execute(count.select_from(PAYMENTS)).scalar_one()
    finally:
        engine.dispose()
    return History(
        invoices, payments, len(customers), held_invoices, held_payments,
        time.monotonic() - started,
    )  # fmt: skip
