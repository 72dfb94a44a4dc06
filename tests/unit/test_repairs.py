"""The version rule: a repair (op ``r``) applies at the version the target holds; c/u do not.

A sweep re-reads a row that changed without a new ModifiedDate (a mass update written
straight into the database) and publishes it as op ``r`` with the version the targets
already hold. Both targets must take it; a c or u at that version is a redelivery or a
stale event and changes nothing, and so does a repair that brings nothing new. An older
version never replaces a newer one, whatever its op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import sqlalchemy as sa

from consumers.accounting import AccountingTarget
from consumers.accounting.schema import INVOICES
from consumers.changes import Change
from consumers.shipping import ShippingTarget
from consumers.target import ApplyReport
from queuestream.databases import create_engine
from tests.unit.test_shipping_target import _batch, _line, _order, _site, target
from tests.unit.test_target_deletes import target_url

__all__ = ["target", "target_url"]  # fixtures used here too


def _apply(engine: sa.Engine, *changes: Change) -> ApplyReport:
    accounting = AccountingTarget()
    grouped: dict[str, list[Change]] = {t: [] for t in accounting.tables}
    for c in changes:
        grouped[c.table].append(c)
    report = ApplyReport()
    with engine.begin() as conn:
        accounting.create_schema(conn)
        accounting.apply(conn, grouped, report)
    return report


def _total(engine: sa.Engine) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.select(INVOICES.c.total)).scalar_one()


def test_accounting_takes_a_repair_at_the_version_it_holds(target_url: str) -> None:
    engine = create_engine(target_url)
    assert _apply(engine, _order(1, 2, 5)).applied == Counter({"invoices.u": 1})
    fixed = _order(1, 2, 5, SubTotal=20, Total=20)  # same ModifiedDate, other values
    stale = _apply(engine, fixed)  # as an update: a stale or redelivered event
    assert (stale.applied, stale.stale) == (Counter(), Counter({"orders": 1}))
    assert _total(engine) == 10
    repaired = _apply(engine, replace(fixed, op="r"))
    assert repaired.applied == Counter({"invoices.r": 1})
    assert _total(engine) == 20
    again = _apply(engine, replace(fixed, op="r"))  # a repair replayed changes nothing
    assert (again.applied, again.stale) == (Counter(), Counter({"orders": 1}))
    older = _apply(engine, replace(_order(1, 2, 4, Total=30), op="r"))
    assert (older.applied, older.stale) == (Counter(), Counter({"orders": 1}))
    assert _total(engine) == 20


def test_shipping_rederives_the_shipment_of_a_repaired_order(
    target: tuple[sa.Engine, ShippingTarget],
) -> None:
    _, shipments = _batch(target, _site(1, 1), _order(1, 8, 2), _line(1, 1))
    assert shipments[1]["status"] == "ready"
    printed = _order(1, 9, 2)  # Printed, written without a new ModifiedDate
    report, shipments = _batch(target, printed)
    assert not report.applied and shipments[1]["status"] == "ready"
    report, shipments = _batch(target, replace(printed, op="r"))
    assert report.applied == Counter({"order_headers.r": 1, "shipments.u": 1})
    assert shipments[1]["status"] == "printed"
    report, _ = _batch(target, replace(printed, op="r"))
    assert not report.applied
