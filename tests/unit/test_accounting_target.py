"""The accounting target: invoices, payments and balances follow a simulated sync database.

A simulated source runs in rounds; after each round the rows that changed become
change events (tests/source_changes.py) and are applied in one transaction, as the
runtime would. The target must then reconcile exactly with the source (computed
from the source tables, not by the target's apply code), hold the figures the
accounting rules call for (checked here against sums made independently from the
source), refuse redelivered and stale events, and reject bad records by table, key
and column while applying the rest of their batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from consumers.accounting import AccountingTarget
from consumers.accounting.schema import (
    CUSTOMER_BALANCES,
    INVOICE_LINES,
    INVOICES,
    LEDGER_ACCOUNTS,
    PAYMENTS,
)
from consumers.changes import Change
from consumers.reconcile import Reconciliation, compare
from consumers.target import ApplyReport
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.sync_schema import create_source_schema, source_table
from tests.source_changes import SteppingClock, change, source_changes

ZONE = ZoneInfo("UTC")
SEED = 11
ROUNDS = 6
ACTIONS_PER_ROUND = 60
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
CANCELED = 5


@dataclass
class _Run:
    """A simulated source, an accounting target, and the batches applied so far."""

    source: sa.Engine
    target: sa.Engine
    clock: SteppingClock
    accounting: AccountingTarget = field(default_factory=AccountingTarget)
    batches: list[dict[str, list[Change]]] = field(default_factory=list)
    reports: list[ApplyReport] = field(default_factory=list)

    def apply(self, changes: dict[str, list[Change]]) -> ApplyReport:
        report = ApplyReport()
        with self.target.begin() as conn:
            self.accounting.apply(conn, changes, report)
        return report

    def reconcile(self) -> Reconciliation:
        with self.source.connect() as src, self.target.connect() as dst:
            return compare(
                "accounting", self.accounting.expected(src, ZONE), self.accounting.actual(dst)
            )

    def rows(self, table: sa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
        key = [c.name for c in table.primary_key.columns]
        with self.target.connect() as conn:
            return {
                tuple(r._mapping[k] for k in key): dict(r._mapping)
                for r in conn.execute(sa.select(table))
            }


def _changed_since(changes: dict[str, list[Change]], version: int) -> dict[str, list[Change]]:
    return {t: [c for c in rows if c.version > version] for t, rows in changes.items()}


def _simulate(source_url: str, target_url: str, seed: int = SEED) -> _Run:
    """Run the simulator in rounds, applying what each round changed as one batch."""
    source = create_engine(source_url, writer=True)
    create_source_schema(source)
    clock = SteppingClock(T0)
    run = _Run(source, create_engine(target_url), clock)
    with run.target.begin() as conn:
        run.accounting.create_schema(conn)
    simulator = Simulator(source, ZONE, seed=seed, clock=clock)
    seen = -1
    for _ in range(ROUNDS):
        simulator.run(ACTIONS_PER_ROUND, per_transaction=10)
        everything = source_changes(source, ZONE, run.accounting.tables)
        batch = _changed_since(everything, seen)
        seen = max(c.version for rows in everything.values() for c in rows)
        run.batches.append(batch)
        run.reports.append(run.apply(batch))
    return run


def _all_changes(run: _Run) -> dict[str, list[Change]]:
    return source_changes(run.source, ZONE, run.accounting.tables)


def _source_rows(run: _Run, table: str) -> list[dict[str, Any]]:
    with run.source.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(source_table(table)))]


def _later(run: _Run) -> datetime:
    """A source-local timestamp newer than anything written so far."""
    return run.clock()


def _assert_ok(result: Reconciliation) -> None:
    bad = [c.as_dict() for c in result.checks if not c.ok]
    assert result.ok, bad


# -- the simulated source, applied round by round -----------------------------------------
@pytest.fixture
def run(sqlite_url: str, tmp_path: Any) -> _Run:
    return _simulate(sqlite_url, f"sqlite:///{tmp_path / 'accounting.db'}")


def test_rounds_reconcile_with_the_source(run: _Run) -> None:
    _assert_ok(run.reconcile())
    applied = sum((r.applied for r in run.reports), Counter[str]())
    # Orders changed status across rounds, so invoices were updated, not only inserted.
    assert applied["invoices.u"] > len(_source_rows(run, "orders"))
    assert not any(r.rejected for r in run.reports)
    tables = {c.table for c in run.reconcile().checks}
    assert tables == {
        "ledger_accounts",
        "invoices",
        "invoice_lines",
        "payments",
        "customer_balances",
    }


def test_a_cancelled_order_voids_its_invoice_and_owes_nothing(run: _Run) -> None:
    cancelled = [o for o in _source_rows(run, "orders") if o["OrderStatusID"] == CANCELED]
    assert cancelled, "the simulation should cancel some orders"
    invoices = run.rows(INVOICES)
    for order in cancelled:
        invoice = invoices[(order["OrderID"],)]
        assert invoice["status"] == "void"
        assert invoice["balance_due"] == Decimal("0.00")
        assert invoice["order_status_id"] == CANCELED
    others = [o for o in _source_rows(run, "orders") if o["OrderStatusID"] != CANCELED]
    assert {invoices[(o["OrderID"],)]["status"] for o in others} == {"open"}


def test_balances_are_open_invoices_minus_payments(run: _Run) -> None:
    # A pair with only void invoices still has a row (of zeros).
    invoiced: defaultdict[tuple[int, str], Decimal] = defaultdict(Decimal)
    paid: defaultdict[tuple[int, str], Decimal] = defaultdict(Decimal)
    paid_on: defaultdict[int, Decimal] = defaultdict(Decimal)
    for order in _source_rows(run, "orders"):
        pair = (order["CustomerID"], order["CurrencyCode"].upper())
        void = order["OrderStatusID"] == CANCELED
        invoiced[pair] += Decimal(0) if void else Decimal(order["Total"])
    for payment in _source_rows(run, "payments"):
        paid[(payment["CustomerID"], payment["CurrencyCode"].upper())] += Decimal(payment["Amount"])
        paid_on[payment["OrderID"]] += Decimal(payment["Amount"])
    balances = run.rows(CUSTOMER_BALANCES)
    assert set(balances) == set(invoiced) | set(paid)
    assert any(b["open_balance"] for b in balances.values())
    for pair, row in balances.items():
        assert row["invoiced"] == invoiced[pair]
        assert row["paid"] == paid[pair]
        assert row["open_balance"] == invoiced[pair] - paid[pair]
    assert paid_on, "the simulation should record payments"
    invoices = run.rows(INVOICES)
    for order_id, amount in paid_on.items():
        invoice = invoices[(order_id,)]
        assert invoice["amount_paid"] == amount
        if invoice["status"] == "open":
            assert invoice["balance_due"] == invoice["total"] - amount


def test_replaying_everything_changes_nothing(run: _Run) -> None:
    with run.target.connect() as conn:
        before = run.accounting.actual(conn)
    everything = _all_changes(run)
    report = run.apply(everything)
    assert not report.applied
    assert report.stale == Counter({t: len(rows) for t, rows in everything.items()})
    for batch in run.batches:  # every batch redelivered, in order
        again = run.apply(batch)
        assert not again.applied
        assert sum(again.stale.values()) == sum(len(rows) for rows in batch.values())
    with run.target.connect() as conn:
        assert run.accounting.actual(conn) == before


def test_an_older_version_after_a_newer_one_changes_nothing(run: _Run) -> None:
    order = next(o for o in _source_rows(run, "orders") if o["OrderStatusID"] == CANCELED)
    key = (order["OrderID"],)
    stored = run.rows(INVOICES)[key]
    older = {
        **order,
        "OrderStatusID": 2,
        "Total": Decimal("1.00"),
        "ModifiedDate": (order["ModifiedDate"] - timedelta(seconds=1)).replace(tzinfo=UTC),
        "OrderDate": order["OrderDate"].replace(tzinfo=UTC),
        "CreatedDate": order["CreatedDate"].replace(tzinfo=UTC),
    }
    same = {**older, "ModifiedDate": order["ModifiedDate"].replace(tzinfo=UTC)}
    report = run.apply({"orders": [change("orders", same), change("orders", older)]})
    assert not report.applied
    assert report.stale == Counter({"orders": 2})
    assert run.rows(INVOICES)[key] == stored
    _assert_ok(run.reconcile())


def test_updates_that_move_rows_and_deletes_recompute_both_sides(run: _Run) -> None:
    payments = _source_rows(run, "payments")
    assert len(payments) >= 2
    moved, removed = payments[0], payments[1]
    other = next(
        c["CustomerID"]
        for c in _source_rows(run, "customers")
        if c["CustomerID"] not in (moved["CustomerID"], removed["CustomerID"])
    )
    orders = source_table("orders")
    with run.source.begin() as conn:
        # An order and a payment move to another customer; a payment is deleted.
        conn.execute(
            sa.update(orders)
            .where(orders.c.OrderID == moved["OrderID"])
            .values(CustomerID=other, ModifiedDate=_later(run))
        )
        table = source_table("payments")
        conn.execute(
            sa.update(table)
            .where(table.c.PaymentID == moved["PaymentID"])
            .values(CustomerID=other, ModifiedDate=_later(run))
        )
        conn.execute(sa.delete(table).where(table.c.PaymentID == removed["PaymentID"]))
    everything = _all_changes(run)
    latest = max(c.version for rows in run.batches for cs in rows.values() for c in cs)
    batch = _changed_since(everything, latest)
    stamp = {
        k: (v.replace(tzinfo=UTC) if isinstance(v, datetime) else v) for k, v in removed.items()
    }
    batch["payments"].append(change("payments", stamp, op="d"))
    report = run.apply(batch)
    assert report.applied == Counter({"invoices.u": 1, "payments.u": 1, "payments.d": 1})
    assert (removed["PaymentID"],) not in run.rows(PAYMENTS)
    _assert_ok(run.reconcile())  # balances of old and new customers, amount_paid of both invoices


def test_a_paid_invoice_updated_owes_its_new_total_less_the_payments_in_its_currency(
    run: _Run,
) -> None:
    """An invoice's write sets what it owes from what its stored row says was paid; one
    whose currency changes counts other payments, and is recomputed from them."""
    paid_on: defaultdict[int, Decimal] = defaultdict(Decimal)
    for payment in _source_rows(run, "payments"):
        paid_on[payment["OrderID"]] += Decimal(payment["Amount"])
    source = {o["OrderID"]: o for o in _source_rows(run, "orders")}
    order_id = next(k for k, v in paid_on.items() if v and source[k]["OrderStatusID"] != CANCELED)
    orders = source_table("orders")
    currency = source[order_id]["CurrencyCode"]

    def update(**values: Any) -> dict[str, Any]:
        with run.source.begin() as conn:
            conn.execute(
                sa.update(orders)
                .where(orders.c.OrderID == order_id)
                .values(ModifiedDate=_later(run), **values)
            )
        latest = max(c.version for rows in run.batches for cs in rows.values() for c in cs)
        batch = _changed_since(_all_changes(run), latest)
        run.batches.append(batch)
        assert run.apply(batch).applied["invoices.u"] == 1
        _assert_ok(run.reconcile())
        return run.rows(INVOICES)[(order_id,)]

    invoice = update(Total=Decimal("1234.50"))  # paid as before: owes the rest
    assert invoice["amount_paid"] == paid_on[order_id]
    assert invoice["balance_due"] == Decimal("1234.50") - paid_on[order_id]
    other = "EUR" if currency.upper() != "EUR" else "USD"
    invoice = update(CurrencyCode=other)  # its payments are in another currency now
    assert (invoice["amount_paid"], invoice["balance_due"]) == (0, Decimal("1234.50"))
    invoice = update(CurrencyCode=currency)  # and back
    assert invoice["amount_paid"] == paid_on[order_id]
    assert invoice["balance_due"] == Decimal("1234.50") - paid_on[order_id]


def test_compare_detects_a_tampered_invoice(run: _Run) -> None:
    _assert_ok(run.reconcile())
    order_id = min(k for (k,) in run.rows(INVOICES))
    with run.target.begin() as conn:
        conn.execute(
            sa.update(INVOICES)
            .where(INVOICES.c.order_id == order_id)
            .values(total=INVOICES.c.total + Decimal("0.01"))
        )
    result = run.reconcile()
    assert not result.ok
    check = next(c for c in result.checks if c.table == "invoices")
    assert not check.ok
    assert check.different == [(order_id,)]
    assert check.actual_sums["total"] - check.expected_sums["total"] == Decimal("0.01")
    assert [c.table for c in result.checks if not c.ok] == ["invoices"]


# -- hand-made changes ----------------------------------------------------------------
def _customer(cid: int, stamp: datetime, **more: Any) -> dict[str, Any]:
    return {
        "CustomerID": cid,
        "FirstName": "Ava",
        "LastName": "O'Brien",
        "Company": None,
        "Email": f"ava{cid}@example.com",
        "CurrencyCode": "usd",
        "ModifiedDate": stamp,
        **more,
    }


def _order(oid: int, cid: int, stamp: datetime, total: str, **more: Any) -> dict[str, Any]:
    return {
        "OrderID": oid,
        "CustomerID": cid,
        "OrderStatusID": 2,
        "OrderDate": stamp,
        "CurrencyCode": "usd",
        "SubTotal": Decimal(total),
        "TaxTotal": Decimal("0.00"),
        "ShippingTotal": Decimal("0.00"),
        "Total": Decimal(total),
        "ModifiedDate": stamp,
        **more,
    }


def _line(oid: int, line: int, stamp: datetime, **more: Any) -> dict[str, Any]:
    return {
        "OrderID": oid,
        "OrderLine": line,
        "ItemCode": "TEA-20",
        "ItemDescription": "Herbal tea, 20 bags",
        "Quantity": Decimal("1.0000"),
        "PriceEach": Decimal("0.3000"),
        "PriceTotal": Decimal("0.30"),
        "Tax": Decimal("0.00"),
        "ModifiedDate": stamp,
        **more,
    }


def _payment(
    pid: int, oid: int, cid: int, stamp: datetime, amount: str, **more: Any
) -> dict[str, Any]:
    return {
        "PaymentID": pid,
        "CustomerID": cid,
        "OrderID": oid,
        "PaymentDate": stamp,
        "Amount": Decimal(amount),
        "CurrencyCode": "usd",
        "AuthorizationCode": f"AUTH{pid}",
        "ModifiedDate": stamp,
        **more,
    }


def _empty_target(url: str) -> _Run:
    engine = create_engine(url)
    run = _Run(engine, engine, SteppingClock(T0))
    with run.target.begin() as conn:
        run.accounting.create_schema(conn)
    return run


def test_amounts_stay_exact(sqlite_url: str) -> None:
    run = _empty_target(sqlite_url)
    report = run.apply(
        {
            # Payments first, in their own batch: stored before their invoice exists.
            "payments": [
                change("payments", _payment(1, 10, 1, T0, "0.10")),
                change("payments", _payment(2, 10, 1, T0, "0.20")),
            ],
        }
    )
    assert report.applied == Counter({"payments.u": 2})
    assert run.rows(CUSTOMER_BALANCES)[(1, "USD")]["open_balance"] == Decimal("-0.30")
    run.apply(
        {
            "customers": [change("customers", _customer(1, T0))],
            "orders": [change("orders", _order(10, 1, T0, "0.30"))],
            "order_details": [change("order_details", _line(10, 1, T0))],
        }
    )
    invoice = run.rows(INVOICES)[(10,)]
    assert invoice["amount_paid"] == Decimal("0.10") + Decimal("0.20") == Decimal("0.30")
    assert invoice["balance_due"] == Decimal("0.00")
    balance = run.rows(CUSTOMER_BALANCES)[(1, "USD")]
    assert (balance["invoiced"], balance["paid"], balance["open_balance"]) == (
        Decimal("0.30"),
        Decimal("0.30"),
        Decimal("0.00"),
    )
    account = run.rows(LEDGER_ACCOUNTS)[(1,)]
    assert (account["name"], account["currency"]) == ("Ava O'Brien", "USD")


def test_bad_records_are_rejected_by_name_and_the_rest_applied(sqlite_url: str) -> None:
    run = _empty_target(sqlite_url)
    long_text = "x" * 201
    bad = {
        "euro": change("customers", _customer(2, T0, CurrencyCode="EURO")),
        "long": change("order_details", _line(10, 2, T0, ItemDescription=long_text)),
        "cents": change("payments", _payment(3, 10, 1, T0, "0.005")),
        "huge": change("orders", _order(11, 1, T0, "100000000000000.00")),
    }
    report = run.apply(
        {
            "customers": [change("customers", _customer(1, T0)), bad["euro"]],
            "orders": [change("orders", _order(10, 1, T0, "0.30")), bad["huge"]],
            "order_details": [change("order_details", _line(10, 1, T0)), bad["long"]],
            "payments": [bad["cents"], change("payments", _payment(1, 10, 1, T0, "0.30"))],
        }
    )
    found = {r.change.table: r for r in report.rejected}
    assert [r.change for r in report.rejected] == [
        bad["euro"],
        bad["huge"],
        bad["long"],
        bad["cents"],
    ]
    expected = {
        "customers": ({"CustomerID": 2}, "CurrencyCode", "'EURO' is not a three-letter"),
        "orders": ({"OrderID": 11}, "SubTotal", "does not fit decimal(16,2)"),
        "order_details": (
            {"OrderID": 10, "OrderLine": 2},
            "ItemDescription",
            "201 characters do not fit the target column of 200",
        ),
        "payments": ({"PaymentID": 3}, "Amount", "more than 2 decimal places"),
    }
    for table, (key, column, reason) in expected.items():
        error = found[table].error
        assert (error.table, error.key, error.column) == (table, key, column)
        assert reason in str(error)
        assert f"table {table}" in str(error) and f"column {column}" in str(error)
    assert report.applied == Counter(
        {"ledger_accounts.u": 1, "invoices.u": 1, "invoice_lines.u": 1, "payments.u": 1}
    )
    assert set(run.rows(LEDGER_ACCOUNTS)) == {(1,)}
    assert set(run.rows(INVOICE_LINES)) == {(10, 1)}
    assert run.rows(INVOICES)[(10,)]["balance_due"] == Decimal("0.00")


def test_a_bad_newer_version_does_not_hide_a_good_older_one(sqlite_url: str) -> None:
    run = _empty_target(sqlite_url)
    later = T0 + timedelta(seconds=1)
    report = run.apply(
        {
            "customers": [
                change("customers", _customer(1, T0, Email="good@example.com")),
                change("customers", _customer(1, later, CurrencyCode="EURO")),
            ]
        }
    )
    assert len(report.rejected) == 1
    assert run.rows(LEDGER_ACCOUNTS)[(1,)]["email"] == "good@example.com"


# -- PostgreSQL -------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_target(sqlite_url: str, postgres_url: str) -> None:
    run = _simulate(sqlite_url, postgres_url)
    _assert_ok(run.reconcile())
    everything = _all_changes(run)
    replay = run.apply(everything)
    assert not replay.applied
    assert sum(replay.stale.values()) == sum(len(rows) for rows in everything.values())

    # Text that needs quoting in an array literal, and a void invoice with a payment.
    tricky = 'Kit "deluxe", {big} \\ back\'s NULL'
    stamp = _later(run).replace(tzinfo=UTC)
    cid = min(k for (k,) in run.rows(LEDGER_ACCOUNTS))
    oid = max(k for (k,) in run.rows(INVOICES)) + 1
    report = run.apply(
        {
            "customers": [change("customers", _customer(cid, stamp, Company="NULL"))],
            "orders": [change("orders", _order(oid, cid, stamp, "0.30", OrderStatusID=5))],
            "order_details": [
                change("order_details", _line(oid, 1, stamp, ItemDescription=tricky)),
                change("order_details", _line(oid, 2, stamp, ItemDescription=None)),
            ],
            "payments": [change("payments", _payment(10**6, oid, cid, stamp, "0.10"))],
        }
    )
    assert not report.rejected
    lines = run.rows(INVOICE_LINES)
    assert lines[(oid, 1)]["description"] == tricky
    assert lines[(oid, 2)]["description"] is None
    assert run.rows(LEDGER_ACCOUNTS)[(cid,)]["name"] == "NULL"
    invoice = run.rows(INVOICES)[(oid,)]
    assert (invoice["status"], invoice["amount_paid"], invoice["balance_due"]) == (
        "void",
        Decimal("0.10"),
        Decimal("0.00"),
    )
    assert invoice["invoice_date"] == stamp

    gone = run.apply(
        {"payments": [change("payments", _payment(10**6, oid, cid, stamp, "0.10"), op="d")]}
    )
    assert gone.applied == Counter({"payments.d": 1})
    assert run.rows(INVOICES)[(oid,)]["amount_paid"] == Decimal("0.00")
    assert run.rows(CUSTOMER_BALANCES)[(cid, "USD")]["paid"] == sum(
        (p["amount"] for p in run.rows(PAYMENTS).values() if p["customer_id"] == cid),
        Decimal(0),
    )
