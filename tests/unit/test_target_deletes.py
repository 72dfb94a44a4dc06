"""Deletes in both sample targets, with their business meaning, and verify equal afterwards.

A simulated source is applied round by round (as in the targets' own tests); then rows
are deleted in the source and their delete events (op ``d``, the last row image as
``before``: its ModifiedDate is the delete's version) are applied with whatever else
changed. Each target must do what the rule says and then reconcile with a source where
those rows are gone; the same batch again changes nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumers.accounting.schema import (
    INVOICE_LINES,
    INVOICES,
    LEDGER_ACCOUNTS,
    PAYMENTS,
    UNAPPLIED_PAYMENTS,
    VOID_INVOICES,
)
from consumers.changes import Change
from consumers.shipping.schema import ORDER_LINES, SHIPMENT_LINES, SHIPMENTS
from queuestream.sync_schema import source_table
from tests.source_changes import delete_rows, shrink_order, source_changes
from tests.unit import test_accounting_target as accounting
from tests.unit import test_shipping_target as shipping

ZONE = accounting.ZONE
CANCELED = 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The target database: SQLite, and PostgreSQL (NUMERIC money, array key filters)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'target.db'}"
    return str(request.getfixturevalue("postgres_database")("target"))


def _with(batch: dict[str, list[Change]], deletes: list[Change]) -> dict[str, list[Change]]:
    merged = {t: list(rows) for t, rows in batch.items()}
    for d in deletes:
        merged.setdefault(d.table, []).append(d)
    return merged


def _lines_of(rows: list[dict[str, Any]], order: int) -> list[dict[str, Any]]:
    return [r for r in rows if r["OrderID"] == order]


def test_accounting_voids_unapplies_removes_lines_and_reports_orphans(
    sqlite_url: str, target_url: str
) -> None:
    run = accounting._simulate(sqlite_url, target_url)
    accounting._assert_ok(run.reconcile())
    latest = max(c.version for b in run.batches for cs in b.values() for c in cs)
    orders = accounting._source_rows(run, "orders")
    payments = accounting._source_rows(run, "payments")
    lines = accounting._source_rows(run, "order_details")
    paid = Counter(p["OrderID"] for p in payments)
    # An order with lines and a payment is deleted (its payment stays: a credit).
    voided = next(o for o in orders if paid[o["OrderID"]] and o["OrderStatusID"] != CANCELED)[
        "OrderID"
    ]
    # A payment on another order is deleted: unapplied.
    unapplied = next(p for p in payments if p["OrderID"] != voided)
    # A line leaves another order, which changes with it (the usual edit).
    edited = next(
        o
        for o in orders
        if o["OrderID"] not in (voided, unapplied["OrderID"])
        and len(_lines_of(lines, o["OrderID"])) >= 2
    )
    gone_line = max(_lines_of(lines, edited["OrderID"]), key=lambda r: r["OrderLine"])
    # A customer with orders is deleted while its orders stay.
    orphan = next(o["CustomerID"] for o in orders if o["OrderID"] != voided)
    invoice_before = run.rows(INVOICES)[(voided,)]
    paid_before = run.rows(INVOICES)[(unapplied["OrderID"],)]["amount_paid"]

    o, d, p, c = (source_table(t) for t in ("orders", "order_details", "payments", "customers"))
    deletes = [
        *delete_rows(run.source, ZONE, "order_details", d.c.OrderID == voided),
        *delete_rows(run.source, ZONE, "orders", o.c.OrderID == voided),
        *delete_rows(run.source, ZONE, "payments", p.c.PaymentID == unapplied["PaymentID"]),
        *delete_rows(
            run.source,
            ZONE,
            "order_details",
            (d.c.OrderID == edited["OrderID"]) & (d.c.OrderLine == gone_line["OrderLine"]),
        ),
        *delete_rows(run.source, ZONE, "customers", c.c.CustomerID == orphan),
    ]
    shrink_order(run.source, edited["OrderID"], gone_line["PriceTotal"], accounting._later(run))
    batch = _with(accounting._changed_since(accounting._all_changes(run), latest), deletes)
    report = run.apply(batch)

    voided_lines = len(_lines_of(lines, voided))
    assert report.applied == Counter(
        {
            "invoices.d": 1,
            "invoices.u": 1,
            "invoice_lines.d": voided_lines + 1,
            "payments.d": 1,
            "ledger_accounts.d": 1,
        }
    )
    # The deleted order's invoice is void, kept as it stood, with the delete's version.
    assert (voided,) not in run.rows(INVOICES)
    void = run.rows(VOID_INVOICES)[(voided,)]
    assert (void["status"], void["balance_due"]) == ("void", 0)
    assert void["total"] == invoice_before["total"]
    assert void["deleted_version"] == next(x.version for x in deletes if x.table == "orders")
    # The deleted payment is unapplied from its invoice and kept apart.
    assert (unapplied["PaymentID"],) not in run.rows(PAYMENTS)
    assert (unapplied["PaymentID"],) in run.rows(UNAPPLIED_PAYMENTS)
    invoice = run.rows(INVOICES)[(unapplied["OrderID"],)]
    if invoice["currency"] == unapplied["CurrencyCode"].upper():
        assert invoice["amount_paid"] == paid_before - unapplied["Amount"]
    # The line left its invoice; the invoice has the order's new totals.
    assert (edited["OrderID"], gone_line["OrderLine"]) not in run.rows(INVOICE_LINES)
    assert run.rows(INVOICES)[(edited["OrderID"],)]["total"] == (
        edited["Total"] - gone_line["PriceTotal"]
    )
    # The customer whose orders remain is reported, not guessed about.
    assert (orphan,) not in run.rows(LEDGER_ACCOUNTS)
    assert report.notices == Counter({"ledger_accounts.deleted_with_orders": 1})
    accounting._assert_ok(run.reconcile())

    again = run.apply(batch)  # redelivered: nothing changes, nothing is reported again
    assert not again.applied and not again.notices
    assert sum(again.stale.values()) == sum(len(rows) for rows in batch.values())
    accounting._assert_ok(run.reconcile())


def test_shipping_cancels_open_shipments_keeps_shipped_ones_and_drops_lines(
    sqlite_url: str, target_url: str
) -> None:
    run = shipping._simulate(sqlite_url, target_url, shipping.SEED)
    shipping._assert_reconciles(run)
    latest = max(c.version for b in run.batches for cs in b.values() for c in cs)
    shipments = shipping._table(run.target, SHIPMENTS)
    lines = shipping._table(run.target, ORDER_LINES)
    open_one = next(k for k, s in shipments.items() if s["status"] in ("ready", "printed"))
    shipped = next(k for k, s in shipments.items() if s["status"] == "shipped")
    trimmed = next(
        k
        for k, s in shipments.items()
        if k not in (open_one, shipped)
        and s["status"] != "canceled"
        and sum(1 for (order, _) in lines if order == k) >= 2
    )
    gone_line = max(line for (order, line) in lines if order == trimmed)
    site = next(s["customer_id"] for s in shipments.values())

    o, d, s = (source_table(t) for t in ("orders", "order_details", "customer_sites"))
    deletes = []
    for order in (open_one, shipped):
        deletes += delete_rows(run.source, ZONE, "order_details", d.c.OrderID == order)
        deletes += delete_rows(run.source, ZONE, "orders", o.c.OrderID == order)
    deletes += delete_rows(
        run.source, ZONE, "order_details", (d.c.OrderID == trimmed) & (d.c.OrderLine == gone_line)
    )
    deletes += delete_rows(run.source, ZONE, "customer_sites", s.c.CustomerID == site)
    fresh = {
        t: [c for c in found if c.version > latest]
        for t, found in source_changes(run.source, ZONE, run.shipping.tables).items()
    }
    batch = _with(fresh, deletes)
    report = shipping._apply(run, batch)

    after = shipping._table(run.target, SHIPMENTS)
    assert after[open_one]["status"] == "canceled"  # not shipped: canceled, kept
    assert after[shipped] == shipments[shipped]  # shipped: kept as it was ...
    assert report.notices == Counter({"shipments.shipped_order_deleted": 1})  # ... and reported
    assert report.applied["order_headers.d"] == 2
    assert report.applied["ship_to_sites.d"] == 1
    view = shipping._table(run.target, SHIPMENT_LINES)
    assert (trimmed, gone_line) not in view  # the line left its shipment
    assert any(order == trimmed for (order, _) in view)
    assert not any(order in (open_one, shipped) for (order, _) in view)
    shipping._assert_reconciles(run)

    again = shipping._apply(run, batch)
    assert not again.applied and not again.notices
    shipping._assert_reconciles(run)
