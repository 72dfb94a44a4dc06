"""What the accounting target should hold, from the source, and what it holds.

``queuestream verify accounting`` compares the two (:mod:`consumers.verify`,
:func:`consumers.reconcile.compare`), table by table: ledger_accounts, invoices,
invoice_lines, payments and customer_balances, every column but the keys.

:func:`expected_images` computes them in Python straight from the source tables,
not from events and not with the target's SQL, so that a fault in the apply path
shows as a difference: an invoice's ``amount_paid`` sums the payments on its order
in its currency; a cancelled order (OrderStatusID 5) is a void invoice that owes
nothing and counts as not invoiced; a customer's balance per currency is the
open invoices' totals minus all payments, with the newest version among them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.accounting.schema import (
    CANCELED,
    CUSTOMER_BALANCES,
    INVOICE_LINES,
    INVOICES,
    LEDGER_ACCOUNTS,
    PAYMENTS,
    STATUS_OPEN,
    STATUS_VOID,
)
from consumers.reconcile import TableImage, source_instant, source_table, source_version

__all__ = ["actual_images", "expected_images"]


def expected_images(source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
    """The five tables as the source says they should be, computed in Python."""

    def version(moment: datetime) -> int:
        return source_version(moment, zone)

    images = _images()
    for r in source.execute(sa.select(source_table("customers"))):
        name = r.Company or " ".join(p for p in (r.FirstName, r.LastName) if p)
        images["ledger_accounts"].add(
            (r.CustomerID,),
            {
                "name": name,
                "currency": r.CurrencyCode.upper(),
                "email": r.Email,
                "source_version": version(r.ModifiedDate),
            },
        )

    paid_on: dict[tuple[int, str], Decimal] = {}
    balances: dict[tuple[int, str], dict[str, Any]] = {}

    def balance(customer: int, currency: str, moment: int) -> dict[str, Any]:
        entry = balances.setdefault(
            (customer, currency),
            {"invoiced": Decimal(0), "paid": Decimal(0), "source_version": moment},
        )
        entry["source_version"] = max(entry["source_version"], moment)
        return entry

    for r in source.execute(sa.select(source_table("payments"))):
        currency = r.CurrencyCode.upper()
        amount = Decimal(r.Amount)
        moment = version(r.ModifiedDate)
        images["payments"].add(
            (r.PaymentID,),
            {
                "customer_id": r.CustomerID,
                "order_id": r.OrderID,
                "payment_date": source_instant(r.PaymentDate, zone),
                "amount": amount,
                "currency": currency,
                "authorization_code": r.AuthorizationCode,
                "source_version": moment,
            },
        )
        paid_on[(r.OrderID, currency)] = paid_on.get((r.OrderID, currency), Decimal(0)) + amount
        balance(r.CustomerID, currency, moment)["paid"] += amount

    for r in source.execute(sa.select(source_table("orders"))):
        currency = r.CurrencyCode.upper()
        total = Decimal(r.Total)
        void = r.OrderStatusID == CANCELED
        paid = paid_on.get((r.OrderID, currency), Decimal(0))
        moment = version(r.ModifiedDate)
        images["invoices"].add(
            (r.OrderID,),
            {
                "customer_id": r.CustomerID,
                "currency": currency,
                "invoice_date": source_instant(r.OrderDate, zone),
                "subtotal": Decimal(r.SubTotal),
                "tax": Decimal(r.TaxTotal),
                "shipping": Decimal(r.ShippingTotal),
                "total": total,
                "status": STATUS_VOID if void else STATUS_OPEN,
                "order_status_id": r.OrderStatusID,
                "amount_paid": paid,
                "balance_due": Decimal(0) if void else total - paid,
                "source_version": moment,
            },
        )
        entry = balance(r.CustomerID, currency, moment)
        if not void:
            entry["invoiced"] += total

    for r in source.execute(sa.select(source_table("order_details"))):
        images["invoice_lines"].add(
            (r.OrderID, r.OrderLine),
            {
                "item_code": r.ItemCode,
                "description": r.ItemDescription,
                "quantity": Decimal(r.Quantity),
                "unit_price": Decimal(r.PriceEach),
                "amount": Decimal(r.PriceTotal),
                "tax": Decimal(r.Tax),
                "source_version": version(r.ModifiedDate),
            },
        )

    for pair, entry in balances.items():
        entry["open_balance"] = entry["invoiced"] - entry["paid"]
        images["customer_balances"].add(pair, entry)
    return images


def actual_images(target: sa.Connection) -> dict[str, TableImage]:
    """The five tables as the target holds them."""
    images = _images()
    for table in (LEDGER_ACCOUNTS, INVOICES, INVOICE_LINES, PAYMENTS, CUSTOMER_BALANCES):
        images[table.name].read(target, table)
    return images


def _images() -> dict[str, TableImage]:
    return {
        "ledger_accounts": TableImage(("name", "currency", "email", "source_version")),
        "invoices": TableImage(
            (
                "customer_id",
                "currency",
                "invoice_date",
                "subtotal",
                "tax",
                "shipping",
                "total",
                "status",
                "order_status_id",
                "amount_paid",
                "balance_due",
                "source_version",
            ),
            money=("subtotal", "tax", "shipping", "total", "amount_paid", "balance_due"),
        ),
        "invoice_lines": TableImage(
            (
                "item_code",
                "description",
                "quantity",
                "unit_price",
                "amount",
                "tax",
                "source_version",
            ),
            money=("amount", "tax"),
        ),
        "payments": TableImage(
            (
                "customer_id",
                "order_id",
                "payment_date",
                "amount",
                "currency",
                "authorization_code",
                "source_version",
            ),
            money=("amount",),
        ),
        "customer_balances": TableImage(
            ("invoiced", "paid", "open_balance", "source_version"),
            money=("invoiced", "paid", "open_balance"),
        ),
    }
