"""The accounting sample target: ledger accounts, invoices, payments and balances.

Source table      target table       key
Customers      -> ledger_accounts    customer_id
Orders         -> invoices           order_id (the invoice number is the order id)
OrderDetails   -> invoice_lines      (order_id, line)
Payments       -> payments           payment_id
(maintained)      customer_balances  (customer_id, currency)

See :mod:`consumers.accounting.schema` for the columns, and
:mod:`consumers.accounting.balances` for the maintained figures and the
accounting rules behind them.

How a batch is applied (:meth:`AccountingTarget.apply`), table by table in
foreign-key order:

1. Every change is validated and mapped in Python before any SQL
   (:func:`~consumers.target_rows.validate`): currencies are three-letter codes
   (stored upper-case), text fits its column, amounts fit their NUMERIC precision
   and scale, timestamps are aware. A failing record is handed to
   ``report.reject`` with a RecordError naming table, key and column, and skipped;
   the rest of the batch is applied. Validation comes before
   :func:`~consumers.target_rows.latest_per_key`, so a bad newest version does not
   hide a good older one in the same batch: the result does not depend on where
   batches are cut.
2. One change per key survives; the upserts of a table go out as one statement
   (:func:`~consumers.target_sql.upsert_versioned`): equal or older versions change
   nothing. Deletes go through :func:`~consumers.target_sql.delete_versioned`.
3. Before writing orders and payments, one batched SELECT per table reads the
   stored rows of the batch's keys: the customer (and invoice) each belonged to,
   and what it added to that customer's balance.
4. At the end, ``invoices.amount_paid`` / ``balance_due`` are refreshed for the
   invoices touched by order or payment changes; ``customer_balances`` takes what
   each written row changed of its balance (a delta), and the customers a row left
   (moved or deleted) are recomputed with SQL SUMs, all with set-based SQL (no
   per-row statements; :mod:`consumers.accounting.balances`).

Counting: ``report.applied["<target table>.<op>"]`` counts rows the batch changed
(inserted, updated or deleted), by the op of the event that changed them;
``report.stale["<source table>"]`` counts valid events that changed nothing:
redelivered, older than the stored row, or superseded by a newer event of the
same key in the batch. The maintained columns and balances are not counted.

Deletes (op ``d``; a delete removes a row where the stored version is not newer
than the delete's ``before.ModifiedDate``), with their accounting meaning:

- an order line: its invoice line goes; the invoice keeps the order's own totals
  (the source's Orders.SubTotal/Total, which the source changes with the order in
  the same refresh), and its figures and its customer's balance are recomputed;
- a payment: unapplied. It leaves ``payments`` for ``unapplied_payments``; its
  invoice's ``amount_paid`` / ``balance_due`` and its customer's balance are
  recomputed;
- an order: its invoice is voided. It leaves ``invoices`` for ``void_invoices``
  (status ``void``, nothing due); its customer's balance is recomputed. Payments
  made on it stay, as a credit of the customer (as on a cancelled order);
- a customer: its ledger account goes. If invoices or payments of the customer
  remain, nothing is guessed about them (they stay, with the balance): the target
  logs a warning naming the customers and counts the notice
  ``ledger_accounts.deleted_with_orders`` in the sync log and in metrics.

Reconciliation (``queuestream verify``): :mod:`consumers.accounting.reconcile`.

Limits: a delete removes the row, so replaying a row's upsert alone after its
delete inserts it again (a replay from an earlier offset replays the delete too).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.accounting import reconcile
from consumers.accounting.balances import (
    Touched,
    contribution,
    inserted_meanwhile,
    order_unseen_invoices,
    owners,
)
from consumers.accounting.schema import (
    CANCELED,
    INVOICE_LINES,
    INVOICES,
    LEDGER_ACCOUNTS,
    METADATA,
    PAYMENTS,
    STATUS_OPEN,
    STATUS_VOID,
    UNAPPLIED_PAYMENTS,
    VOID_INVOICES,
)
from consumers.changes import Change
from consumers.reconcile import TableImage
from consumers.target import ApplyReport, Target
from consumers.target_rows import (
    DecimalRule,
    Row,
    check_currency,
    check_decimal,
    check_instant,
    check_length,
    check_required,
    text_limit,
    validate,
)
from consumers.target_sql import Archive, Money
from consumers.target_write import Written, write_rows
from queuestream.errors import RetriableError
from queuestream.key_sets import KEYS, among, key_chunks
from queuestream.tables import TABLES_BY_NAME

__all__ = ["AccountingTarget"]

log = logging.getLogger(__name__)

_TARGET = "accounting"  # names this target in "NULL in a column the ... target requires"


# -- validation and mapping (pure Python, per record) -----------------------------------
#: The checks, bound once to their target column (partials: no extra Python frame per value).
_required = functools.partial(check_required, required_by=_TARGET)
_instant = functools.partial(check_instant, required_by=_TARGET)


def _column_rules() -> tuple[dict[str, int], dict[str, DecimalRule]]:
    """Text lengths and amount limits by "<table>.<column>", read once from the schema."""
    lengths: dict[str, int] = {}
    amounts: dict[str, DecimalRule] = {}
    for table in METADATA.tables.values():
        for column in table.columns:
            name = f"{table.name}.{column.name}"
            if isinstance(column.type, Money):
                amounts[name] = DecimalRule.of(column)
            elif isinstance(column.type, sa.String) and column.type.length is not None:
                lengths[name] = text_limit(column)
    return lengths, amounts


_LENGTHS, _AMOUNTS = _column_rules()
#: Each of FirstName and LastName gets half of ledger_accounts.name ("First Last").
_NAME_PART = _LENGTHS["ledger_accounts.name"] // 2


#: By target column ("<table>.<column>"): the text of a source column if it fits.
_TEXT = {name: functools.partial(check_length, limit=n) for name, n in _LENGTHS.items()}
#: By target column: the amount of a source column if it fits exactly (required).
_MONEY = {
    name: functools.partial(check_decimal, rule=rule, required_by=_TARGET)
    for name, rule in _AMOUNTS.items()
}


def _written(table: sa.Table, *maintained: str) -> tuple[str, ...]:
    """The columns a row of ``table`` maps (its columns in order, but the ``maintained``)."""
    return tuple(c.name for c in table.columns if c.name not in maintained)


#: The columns of each mapping below, in the order of its tuple (the table's order).
_LEDGER_ACCOUNT = _written(LEDGER_ACCOUNTS)


def _ledger_account(change: Change) -> Row:
    first = check_length(change, "FirstName", _NAME_PART)
    last = check_length(change, "LastName", _NAME_PART)
    company = _TEXT["ledger_accounts.name"](change, "Company")
    return (
        _required(change, "CustomerID"),
        company or " ".join(p for p in (first, last) if p),
        check_currency(change),
        _TEXT["ledger_accounts.email"](change, "Email"),
        change.version,
    )


_INVOICE = _written(INVOICES, "amount_paid", "balance_due")


def _invoice(change: Change) -> Row:
    status_id = _required(change, "OrderStatusID")
    return (
        _required(change, "OrderID"),
        _required(change, "CustomerID"),
        check_currency(change),
        _instant(change, "OrderDate"),
        _MONEY["invoices.subtotal"](change, "SubTotal"),
        _MONEY["invoices.tax"](change, "TaxTotal"),
        _MONEY["invoices.shipping"](change, "ShippingTotal"),
        _MONEY["invoices.total"](change, "Total"),
        STATUS_VOID if status_id == CANCELED else STATUS_OPEN,
        status_id,
        change.version,
    )


_INVOICE_LINE = _written(INVOICE_LINES)


def _invoice_line(change: Change) -> Row:
    order, line = _required(change, "OrderID"), _required(change, "OrderLine")
    _required(change, "ItemCode")
    return (
        order,
        line,
        _TEXT["invoice_lines.item_code"](change, "ItemCode"),
        _TEXT["invoice_lines.description"](change, "ItemDescription"),
        _MONEY["invoice_lines.quantity"](change, "Quantity"),
        _MONEY["invoice_lines.unit_price"](change, "PriceEach"),
        _MONEY["invoice_lines.amount"](change, "PriceTotal"),
        _MONEY["invoice_lines.tax"](change, "Tax"),
        change.version,
    )


_PAYMENT = _written(PAYMENTS)


def _payment(change: Change) -> Row:
    return (
        _required(change, "PaymentID"),
        _required(change, "CustomerID"),
        _required(change, "OrderID"),
        _instant(change, "PaymentDate"),
        _MONEY["payments.amount"](change, "Amount"),
        check_currency(change),
        _TEXT["payments.authorization_code"](change, "AuthorizationCode"),
        change.version,
    )


@dataclass(frozen=True)
class _Route:
    """Where the changes of one source table go."""

    target: sa.Table
    columns: tuple[str, ...]  # of the rows ``to_row`` gives
    to_row: Callable[[Change], Row]
    reads: tuple[str, ...]  # the source columns ``to_row`` reads (Target.reads)
    #: Columns read before writing, to recompute what a moved or deleted row left:
    #: (customer column, invoice column or None). None: the table feeds no balance.
    owners: tuple[str, str | None] | None = None
    #: Where deleted rows are kept (None: deleted rows are gone).
    archive: Archive | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.target.primary_key.columns)


_ROUTES: dict[str, _Route] = {
    "customers": _Route(
        LEDGER_ACCOUNTS,
        _LEDGER_ACCOUNT,
        _ledger_account,
        ("CustomerID", "FirstName", "LastName", "Company", "CurrencyCode", "Email"),
    ),
    "orders": _Route(
        INVOICES,
        _INVOICE,
        _invoice,
        (
            "OrderID",
            "CustomerID",
            "OrderStatusID",
            "CurrencyCode",
            "OrderDate",
            "SubTotal",
            "TaxTotal",
            "ShippingTotal",
            "Total",
        ),
        ("customer_id", "order_id"),
        Archive(VOID_INVOICES, {"status": STATUS_VOID, "balance_due": Decimal(0)}),
    ),
    "order_details": _Route(
        INVOICE_LINES,
        _INVOICE_LINE,
        _invoice_line,
        (
            "OrderID",
            "OrderLine",
            "ItemCode",
            "ItemDescription",
            "Quantity",
            "PriceEach",
            "PriceTotal",
            "Tax",
        ),
    ),
    "payments": _Route(
        PAYMENTS,
        _PAYMENT,
        _payment,
        (
            "PaymentID",
            "CustomerID",
            "OrderID",
            "PaymentDate",
            "Amount",
            "CurrencyCode",
            "AuthorizationCode",
        ),
        ("customer_id", "order_id"),
        Archive(UNAPPLIED_PAYMENTS),
    ),
}


def _apply_table(
    connection: sa.Connection,
    table: str,
    batch: Sequence[Change],
    report: ApplyReport,
    touched: Touched,
) -> None:
    """Write one source table's changes; note whose figures they touched."""
    route = _ROUTES[table]
    found = validate(table, batch, route.to_row, report, route.columns)
    if route.owners is None:
        written = write_rows(connection, found, route.target, report, log)
        if table == "order_details":  # a line gone: its invoice and customer recomputed
            _touch_invoices(connection, {order for order, _line in written.removed}, touched)
        elif table == "customers":
            touched.deleted_customers.update(k for (k,) in written.removed)
        return
    # Where the rows stood before this batch (whom they belonged to, what they added to
    # that balance): every key, creates too (a create over a row still there is an update).
    source_key = TABLES_BY_NAME[table].key
    every = [w.key_tuple(source_key) for w in found.winners]
    movable = {k for k, w in zip(every, found.winners, strict=True) if w.op != "c"}
    before = owners(connection, route.target, route.key, route.owners, every)
    written = write_rows(connection, found, route.target, report, log, archive=route.archive)
    (key_column,) = route.key
    keys = written.values(key_column)
    unread = {k for (k,) in movable if (k,) not in before}
    if unread:
        _refuse_owners_unread(connection, route, [k for k in keys if k in unread])
    _note_balances(route, written, before, touched)
    if table == "orders":  # no stored row read before: invoices it inserted
        touched.inserted.update(k for k in keys if (k,) not in before)


def _note_balances(
    route: _Route, written: Written, before: dict[tuple[Any, ...], tuple[Any, ...]],
    touched: Touched,
) -> None:  # fmt: skip
    """What the rows ``written`` changed of their customers' balances and invoices.

    A row that stayed with its customer and currency changes that balance by what it
    adds now less what it added before (:meth:`Touched.change`), a new row by what it
    adds; a row that left a customer or currency (moved, deleted) has that customer's
    balance recomputed.

    A payment written has the invoices it is applied to (now, and before) recomputed.
    An invoice written over a stored one in the same currency is not: its write set
    what it owes from the payments the stored row counted (``balance_due``'s
    ``UPDATED_AS``). A new invoice is (payments may have come before it), and one whose
    currency changed (the payments it counts are others)."""
    assert route.owners is not None
    customer_column, invoice_column = route.owners
    at = written.columns.index
    (key,) = (at(k) for k in route.key)
    customer_at, currency_at, version_at = at(customer_column), at("currency"), at("source_version")
    invoice_at = at(invoice_column) if invoice_column else None
    table = route.target.name
    status_at = at("status") if "status" in written.columns else None
    amount_at = at("total") if table == INVOICES.name else at("amount")
    by_payment = table == PAYMENTS.name
    for row in written.changed:
        customer, currency = row[customer_at], row[currency_at]
        invoice = None if invoice_at is None else row[invoice_at]
        status = None if status_at is None else row[status_at]
        invoiced, paid = contribution(table, status, row[amount_at])
        held = before.get((row[key],))
        if held is None:
            touched.invoice(invoice, by_payment=by_payment)
        else:
            held_customer, held_invoice, held_currency, held_invoiced, held_paid = held
            if by_payment:
                touched.invoice(invoice, by_payment=True)
                touched.invoice(held_invoice, by_payment=True)
            elif held_currency != currency:
                touched.invoice(invoice)
            if (held_customer, held_currency) == (customer, currency):
                invoiced, paid = invoiced - held_invoiced, paid - held_paid
            else:
                touched.customers.add(held_customer)
        touched.change(customer, currency, invoiced, paid, row[version_at])
    for values in written.deleted:
        held = before.get(values)
        if held is not None:
            touched.add(held[0], held[1], by_payment=by_payment)


def _refuse_owners_unread(connection: sa.Connection, route: _Route, keys: list[Any]) -> None:
    """Roll the batch back when another member inserted rows it moved, after :func:`owners`
    read that they had no owner: the customer they belonged to would keep them in its
    balance. Applied again, the batch reads the owner that member committed."""
    inserted = inserted_meanwhile(connection, route.target, route.key, keys)
    if inserted:
        shown = ", ".join(map(str, sorted(inserted)[:5])) + (", ..." if len(inserted) > 5 else "")
        msg = (
            f"{route.target.name} {shown}: another transaction (a member of the group) "
            "inserted these rows while this batch changed them; the batch is rolled back "
            "and applied again, reading whom they belong to from what it committed"
        )
        raise RetriableError(msg)


def _touch_invoices(connection: sa.Connection, order_ids: set[int], touched: Touched) -> None:
    """Recompute these invoices and their customers' balances at the end of the batch."""
    query = sa.select(INVOICES.c.order_id, INVOICES.c.customer_id).where(
        among(INVOICES.c.order_id, connection.dialect.name)
    )
    for chunk in key_chunks(connection, order_ids):
        for order, customer in connection.execute(query, {KEYS: chunk}):
            touched.add(customer, order)


def _report_orphans(connection: sa.Connection, customers: set[int], report: ApplyReport) -> None:
    """Customers deleted in the source whose invoices or payments remain: say so, guess not."""
    dialect = connection.dialect.name
    remaining = sa.union(
        sa.select(INVOICES.c.customer_id).where(among(INVOICES.c.customer_id, dialect)),
        sa.select(PAYMENTS.c.customer_id).where(among(PAYMENTS.c.customer_id, dialect)),
    )
    found: list[int] = []
    for chunk in key_chunks(connection, customers):
        found.extend(c for (c,) in connection.execute(remaining, {KEYS: chunk}))
    what = (
        "customers deleted in the source still have invoices or payments here (kept, with "
        "their balances; nothing is guessed): customer ids"
    )
    report.notice("ledger_accounts.deleted_with_orders", found, log, what)


# -- the target -----------------------------------------------------------------------
class AccountingTarget(Target):
    """Invoices, payments and customer balances from Customers, Orders, OrderDetails, Payments."""

    name: ClassVar[str] = "accounting"
    tables: ClassVar[tuple[str, ...]] = ("customers", "orders", "order_details", "payments")
    metadata: ClassVar[sa.MetaData] = METADATA
    reads: ClassVar[Mapping[str, tuple[str, ...]] | None] = {
        table: route.reads for table, route in _ROUTES.items()
    }

    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        touched = Touched()
        for table in self.tables:
            batch = changes.get(table, ())
            if batch:
                _apply_table(connection, table, batch, report, touched)
        touched.recompute(connection)
        if touched.deleted_customers:
            _report_orphans(connection, touched.deleted_customers, report)

    def before_commit(self, connection: sa.Connection) -> None:
        """Invoices this transaction's payments are applied to but did not see: ordered
        with the member inserting them, and recomputed (PostgreSQL)."""
        if connection.dialect.name == "postgresql":
            order_unseen_invoices(connection)

    # -- reconciliation (queuestream verify) -------------------------------------------
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """The five tables as the source says they should be (:mod:`.reconcile`)."""
        return reconcile.expected_images(source, zone)

    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """The five tables as the target holds them (:mod:`.reconcile`)."""
        return reconcile.actual_images(target)
