# mypy sees queuestream.* (setuptools package-dir mapping) as untyped, so Target is Any.
# mypy: allow-subclassing-any
"""The accounting sample target: ledger accounts, invoices, payments and balances.

Source table      target table       key
Customers      -> ledger_accounts    customer_id
Orders         -> invoices           order_id (the invoice number is the order id)
OrderDetails   -> invoice_lines      (order_id, line)
Payments       -> payments           payment_id
(maintained)      customer_balances  (customer_id, currency)

See :mod:`consumers.accounting.schema` for the columns.

How a batch is applied (:meth:`AccountingTarget.apply`), table by table in
foreign-key order:

1. Every change is validated and mapped in Python before any SQL: currencies are
   three-letter codes (stored upper-case), text fits its column, amounts fit their
   NUMERIC precision and scale, timestamps are aware. A failing record is handed
   to ``report.reject`` with a RecordError naming table, key and column, and
   skipped; the rest of the batch is applied. Validation comes before
   :func:`latest_per_key`, so a bad newest version does not hide a good older one
   in the same batch: the result does not depend on where batches are cut.
2. One change per key survives (:func:`latest_per_key`); the upserts of a table go
   out as one statement (:func:`upsert_versioned`): equal or older versions change
   nothing. Deletes go through :func:`delete_versioned`.
3. Before writing orders and payments, one batched SELECT per table reads who
   owned the rows that may move (updates, re-syncs and deletes; a create is a
   row's first version, so it cannot move): the customer (and invoice) it
   belonged to before must be recomputed too.
4. At the end, ``invoices.amount_paid`` / ``balance_due`` are refreshed for the
   invoices touched by order or payment changes, and ``customer_balances`` is
   recomputed with SQL SUMs for the customers touched, both with set-based SQL
   (no per-row statements).

Accounting rules: a cancelled order (OrderStatusID 5) voids its invoice; a void
invoice owes nothing (``balance_due`` 0) and is not invoiced in the balance, but
payments made on it still count as paid (the customer then holds a credit, a
negative ``open_balance``). ``amount_paid`` sums the payments applied to an invoice
in the invoice's currency. A payment whose invoice has not arrived is stored and
counts in the customer's balance at once; it is applied to the invoice when that
arrives. Balances come from invoices and payments only: deleting a customer's
ledger account leaves them.

Counting: ``report.applied["<target table>.<op>"]`` counts rows the batch changed
(inserted, updated or deleted), by the op of the event that changed them;
``report.stale["<source table>"]`` counts valid events that changed nothing:
redelivered, older than the stored row, or superseded by a newer event of the
same key in the batch. The maintained columns and balances are not counted.

Limits: a delete leaves no tombstone, so replaying a row's upsert alone after its
delete inserts it again (a replay from an earlier offset replays the delete too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from consumers.accounting.schema import (
    CUSTOMER_BALANCES,
    INVOICE_LINES,
    INVOICES,
    LEDGER_ACCOUNTS,
    METADATA,
    PAYMENTS,
    STATUS_OPEN,
    STATUS_VOID,
)
from consumers.changes import Change, version_of
from consumers.reconcile import TableImage
from consumers.target import (
    ApplyReport,
    Money,
    Target,
    check_currency,
    check_length,
    delete_versioned,
    latest_per_key,
    upsert_versioned,
)
from queuestream.errors import RecordError
from queuestream.sync_schema import source_table, to_aware
from queuestream.tables import TABLES_BY_NAME

__all__ = ["CANCELED", "AccountingTarget"]

log = logging.getLogger(__name__)

#: Exigo's OrderStatusID of a cancelled order: its invoice is void.
CANCELED = 5

#: Keys per IN (...) list: well below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 2000
_ZERO: sa.ColumnClause[Any] = sa.literal_column("0")


# -- validation and mapping (pure Python, per record) -----------------------------------
def _error(change: Change, column: str, reason: str) -> RecordError:
    return RecordError(reason, table=change.table, key=dict(change.key), column=column)


def _required(change: Change, column: str) -> Any:
    assert change.row is not None
    value = change.row.get(column)
    if value is None:
        raise _error(change, column, "NULL in a column the accounting target requires")
    return value


@dataclass(frozen=True, slots=True)
class _Amount:
    """What fits a Money(p, s) column: below 10**(p-s), at most s decimal places."""

    precision: int
    scale: int
    bound: Decimal
    quantum: Decimal


def _column_rules() -> tuple[dict[str, int], dict[str, _Amount]]:
    """Text lengths and amount limits by "<table>.<column>", read once from the schema."""
    lengths: dict[str, int] = {}
    amounts: dict[str, _Amount] = {}
    for table in METADATA.tables.values():
        for column in table.columns:
            name, kind = f"{table.name}.{column.name}", column.type
            if isinstance(kind, Money):
                amounts[name] = _Amount(
                    kind.precision,
                    kind.scale,
                    Decimal(10) ** (kind.precision - kind.scale),
                    Decimal(1).scaleb(-kind.scale),
                )
            elif isinstance(kind, sa.String) and kind.length is not None:
                lengths[name] = kind.length
    return lengths, amounts


_LENGTHS, _AMOUNTS = _column_rules()
#: Each of FirstName and LastName gets half of ledger_accounts.name ("First Last").
_NAME_PART = _LENGTHS["ledger_accounts.name"] // 2


def _text(change: Change, column: str, into: str, *, required: bool = False) -> str | None:
    """The text in ``column`` if it fits the target column ``into`` ("<table>.<column>")."""
    if required:
        _required(change, column)
    value: str | None = check_length(change, column, _LENGTHS[into])
    return value


def _money(change: Change, column: str, into: str) -> Decimal:
    """The amount in ``column`` if it fits the target column ``into`` exactly."""
    rule = _AMOUNTS[into]
    assert change.row is not None
    value = change.row.get(column)
    if (
        type(value) is Decimal
        and value.is_finite()
        and -rule.bound < value < rule.bound
        and value == value.quantize(rule.quantum)
    ):
        return value  # the usual case, checked at once
    value = _required(change, column)
    if isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise _error(change, column, f"{value!r} is not a finite decimal amount")
    if abs(value) >= rule.bound:
        raise _error(change, column, f"{value} does not fit decimal({rule.precision},{rule.scale})")
    if value != value.quantize(rule.quantum):
        raise _error(change, column, f"{value} has more than {rule.scale} decimal places")
    return value


def _instant(change: Change, column: str) -> datetime:
    value = _required(change, column)
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _error(change, column, f"{value!r} is not a timezone-aware timestamp")
    return value.astimezone(UTC)


def _ledger_account(change: Change) -> dict[str, Any]:
    first = check_length(change, "FirstName", _NAME_PART)
    last = check_length(change, "LastName", _NAME_PART)
    company = _text(change, "Company", "ledger_accounts.name")
    return {
        "customer_id": _required(change, "CustomerID"),
        "name": company or " ".join(p for p in (first, last) if p),
        "currency": check_currency(change),
        "email": _text(change, "Email", "ledger_accounts.email"),
        "source_version": change.version,
    }


def _invoice(change: Change) -> dict[str, Any]:
    status_id = _required(change, "OrderStatusID")
    return {
        "order_id": _required(change, "OrderID"),
        "customer_id": _required(change, "CustomerID"),
        "currency": check_currency(change),
        "invoice_date": _instant(change, "OrderDate"),
        "subtotal": _money(change, "SubTotal", "invoices.subtotal"),
        "tax": _money(change, "TaxTotal", "invoices.tax"),
        "shipping": _money(change, "ShippingTotal", "invoices.shipping"),
        "total": _money(change, "Total", "invoices.total"),
        "status": STATUS_VOID if status_id == CANCELED else STATUS_OPEN,
        "order_status_id": status_id,
        "source_version": change.version,
    }


def _invoice_line(change: Change) -> dict[str, Any]:
    return {
        "order_id": _required(change, "OrderID"),
        "line": _required(change, "OrderLine"),
        "item_code": _text(change, "ItemCode", "invoice_lines.item_code", required=True),
        "description": _text(change, "ItemDescription", "invoice_lines.description"),
        "quantity": _money(change, "Quantity", "invoice_lines.quantity"),
        "unit_price": _money(change, "PriceEach", "invoice_lines.unit_price"),
        "amount": _money(change, "PriceTotal", "invoice_lines.amount"),
        "tax": _money(change, "Tax", "invoice_lines.tax"),
        "source_version": change.version,
    }


def _payment(change: Change) -> dict[str, Any]:
    return {
        "payment_id": _required(change, "PaymentID"),
        "customer_id": _required(change, "CustomerID"),
        "order_id": _required(change, "OrderID"),
        "payment_date": _instant(change, "PaymentDate"),
        "amount": _money(change, "Amount", "payments.amount"),
        "currency": check_currency(change),
        "authorization_code": _text(change, "AuthorizationCode", "payments.authorization_code"),
        "source_version": change.version,
    }


@dataclass(frozen=True)
class _Route:
    """Where the changes of one source table go."""

    target: sa.Table
    to_row: Callable[[Change], dict[str, Any]]
    #: Columns read before writing, to recompute what a moved or deleted row left:
    #: (customer column, invoice column or None). None: the table feeds no balance.
    owners: tuple[str, str | None] | None = None

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.target.primary_key.columns)


_ROUTES: dict[str, _Route] = {
    "customers": _Route(LEDGER_ACCOUNTS, _ledger_account),
    "orders": _Route(INVOICES, _invoice, ("customer_id", "order_id")),
    "order_details": _Route(INVOICE_LINES, _invoice_line),
    "payments": _Route(PAYMENTS, _payment, ("customer_id", "order_id")),
}


@dataclass
class _Touched:
    customers: set[int] = field(default_factory=set)
    invoices: set[int] = field(default_factory=set)

    def add(self, customer: int | None, invoice: int | None) -> None:
        if customer is not None:
            self.customers.add(customer)
        if invoice is not None:
            self.invoices.add(invoice)


def _batches(connection: sa.Connection, values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` sorted, in lists small enough for one IN (...) each.

    PostgreSQL takes any number as one array (see :func:`_among`); SQLite gets
    chunks well below its limit of bound parameters.
    """
    ordered = sorted(values)
    size = len(ordered) if connection.dialect.name == "postgresql" else _CHUNK
    for start in range(0, len(ordered), max(size, 1)):
        yield ordered[start : start + size]


def _among(connection: sa.Connection, column: sa.ColumnElement[Any], values: list[Any]) -> Any:
    """``column IN values``: on PostgreSQL ``= ANY(array)``, one parameter however many."""
    if connection.dialect.name == "postgresql":
        array = postgresql.ARRAY(column.type)
        return column == sa.any_(sa.cast(sa.bindparam(None, values, type_=array), array))
    return column.in_(values)


# -- the target -----------------------------------------------------------------------
class AccountingTarget(Target):
    """Invoices, payments and customer balances from Customers, Orders, OrderDetails, Payments."""

    name: ClassVar[str] = "accounting"
    tables: ClassVar[tuple[str, ...]] = ("customers", "orders", "order_details", "payments")
    metadata: ClassVar[sa.MetaData] = METADATA

    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        touched = _Touched()
        for table in self.tables:
            batch = changes.get(table, ())
            if batch:
                self._apply_table(connection, table, batch, report, touched)
        for chunk in _batches(connection, touched.invoices):
            _refresh_invoices(connection, chunk)
        for chunk in _batches(connection, touched.customers):
            _recompute_balances(connection, chunk)

    def _apply_table(
        self,
        connection: sa.Connection,
        table: str,
        batch: Sequence[Change],
        report: ApplyReport,
        touched: _Touched,
    ) -> None:
        route = _ROUTES[table]
        rows: dict[int, dict[str, Any]] = {}
        valid: list[Change] = []
        for change in batch:
            if not change.is_delete:
                try:
                    rows[id(change)] = route.to_row(change)
                except RecordError as error:
                    report.reject(change, error)
                    continue
            valid.append(change)
        winners = latest_per_key(valid, TABLES_BY_NAME[table].key)
        upserts = [w for w in winners if not w.is_delete]
        deletes = [w for w in winners if w.is_delete]
        key = route.key
        # Where rows that may move or vanish belonged before this batch.
        before: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        if route.owners is not None:
            movable = [w.key_tuple(TABLES_BY_NAME[table].key) for w in winners if w.op != "c"]
            before = _owners(connection, route.target, key, route.owners, movable)

        changed = upsert_versioned(connection, route.target, [rows[id(w)] for w in upserts], key)
        by_key = {tuple(rows[id(w)][k] for k in key): w for w in upserts}
        for values in changed:
            winner = by_key[values]
            report.applied[f"{route.target.name}.{winner.op}"] += 1
            if route.owners is not None:
                row = rows[id(winner)]
                customer_column, invoice_column = route.owners
                touched.add(row[customer_column], row[invoice_column] if invoice_column else None)
                touched.add(*before.get(values, (None, None)))

        removed = 0
        if deletes:
            pairs = [(w.key_tuple(TABLES_BY_NAME[table].key), w.version) for w in deletes]
            removed = delete_versioned(connection, route.target, pairs, key)
            if removed:
                report.applied[f"{route.target.name}.d"] += removed
            for values, _version in pairs:
                touched.add(*before.get(values, (None, None)))

        stale = len(valid) - len(changed) - removed
        if stale:
            report.stale[table] += stale
        log.getChild(table).debug(
            "%s: %d events, %d rows changed, %d stale, %d rejected",
            route.target.name,
            len(batch),
            len(changed) + removed,
            stale,
            len(batch) - len(valid),
        )

    # -- reconciliation -----------------------------------------------------------------
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """The five tables as the source says they should be, computed in Python."""

        def version(moment: datetime) -> int:
            micros: int = version_of(to_aware(moment, zone))
            return micros

        images = _images()
        customers = source_table("customers")
        for r in source.execute(sa.select(customers)):
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

        payments = source_table("payments")
        paid_on: dict[tuple[int, str], Decimal] = {}
        balances: dict[tuple[int, str], dict[str, Any]] = {}

        def balance(customer: int, currency: str, moment: int) -> dict[str, Any]:
            entry = balances.setdefault(
                (customer, currency),
                {"invoiced": Decimal(0), "paid": Decimal(0), "source_version": moment},
            )
            entry["source_version"] = max(entry["source_version"], moment)
            return entry

        for r in source.execute(sa.select(payments)):
            currency = r.CurrencyCode.upper()
            amount = Decimal(r.Amount)
            moment = version(r.ModifiedDate)
            images["payments"].add(
                (r.PaymentID,),
                {
                    "customer_id": r.CustomerID,
                    "order_id": r.OrderID,
                    "payment_date": _iso(to_aware(r.PaymentDate, zone)),
                    "amount": amount,
                    "currency": currency,
                    "authorization_code": r.AuthorizationCode,
                    "source_version": moment,
                },
            )
            paid_on[(r.OrderID, currency)] = paid_on.get((r.OrderID, currency), Decimal(0)) + amount
            balance(r.CustomerID, currency, moment)["paid"] += amount

        orders = source_table("orders")
        for r in source.execute(sa.select(orders)):
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
                    "invoice_date": _iso(to_aware(r.OrderDate, zone)),
                    "subtotal": Decimal(r.SubTotal),
                    "tax": Decimal(r.TaxTotal),
                    "shipping": Decimal(r.ShippingTotal),
                    "total": total,
                    "status": "void" if void else "open",
                    "order_status_id": r.OrderStatusID,
                    "amount_paid": paid,
                    "balance_due": Decimal(0) if void else total - paid,
                    "source_version": moment,
                },
            )
            entry = balance(r.CustomerID, currency, moment)
            if not void:
                entry["invoiced"] += total

        details = source_table("order_details")
        for r in source.execute(sa.select(details)):
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

    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """The five tables as the target holds them."""
        images = _images()
        for table in (LEDGER_ACCOUNTS, INVOICES, INVOICE_LINES, PAYMENTS, CUSTOMER_BALANCES):
            image = images[table.name]
            key = [c.name for c in table.primary_key.columns]
            for r in target.execute(sa.select(table)):
                values = dict(r._mapping)
                for name, value in values.items():
                    if isinstance(value, datetime):
                        values[name] = _iso(value)
                image.add(tuple(values[k] for k in key), values)
        return images


def _iso(moment: datetime) -> str:
    """An instant as ISO text in UTC (SQLite gives back naive UTC, PostgreSQL aware)."""
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


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


# -- set-based SQL ------------------------------------------------------------------
def _owners(
    connection: sa.Connection,
    table: sa.Table,
    key: tuple[str, ...],
    owners: tuple[str, str | None],
    keys: Sequence[tuple[Any, ...]],
) -> dict[tuple[Any, ...], tuple[Any, Any]]:
    """key -> (customer, invoice) of the stored rows among ``keys`` (single-column keys)."""
    if not keys:
        return {}
    (column,) = key
    customer_column, invoice_column = owners
    invoice = table.c[invoice_column] if invoice_column else sa.null()
    found: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for chunk in _batches(connection, (k for (k,) in keys)):
        query = sa.select(table.c[column], table.c[customer_column], invoice).where(
            _among(connection, table.c[column], chunk)
        )
        for k, customer, inv in connection.execute(query):
            found[(k,)] = (customer, inv)
    return found


def _refresh_invoices(connection: sa.Connection, order_ids: list[int]) -> None:
    """Recompute amount_paid and balance_due of these invoices from the payments table.

    One UPDATE ... FROM over the payments summed per invoice (in its currency); rows
    whose figures are already right are not written again.
    """
    i, p = INVOICES.c, PAYMENTS.c
    invoice = INVOICES.alias("invoice")
    applied = sa.and_(p.order_id == invoice.c.order_id, p.currency == invoice.c.currency)
    sums = (
        sa.select(invoice.c.order_id, sa.func.coalesce(sa.func.sum(p.amount), _ZERO).label("paid"))
        .select_from(invoice.outerjoin(PAYMENTS, applied))
        .where(_among(connection, invoice.c.order_id, order_ids))
        .group_by(invoice.c.order_id)
        .subquery("sums")
    )
    due = sa.case((i.status == STATUS_VOID, _ZERO), else_=i.total - sums.c.paid)
    connection.execute(
        sa.update(INVOICES)
        .where(
            i.order_id == sums.c.order_id,
            sa.or_(i.amount_paid != sums.c.paid, i.balance_due != due),
        )
        .values(amount_paid=sums.c.paid, balance_due=due)
    )


def _recompute_balances(connection: sa.Connection, customer_ids: list[int]) -> None:
    """Replace the balances of these customers with SUMs over invoices and payments.

    Money columns hold the same scale (2) everywhere, so on SQLite the integer minor
    units add up exactly and are copied as they are.
    """
    i, p, b = INVOICES.c, PAYMENTS.c, CUSTOMER_BALANCES.c
    invoiced = sa.select(
        i.customer_id,
        i.currency,
        sa.case((i.status == STATUS_OPEN, i.total), else_=_ZERO).label("invoiced"),
        _ZERO.label("paid"),
        i.source_version,
    ).where(_among(connection, i.customer_id, customer_ids))
    paid = sa.select(p.customer_id, p.currency, _ZERO, p.amount, p.source_version).where(
        _among(connection, p.customer_id, customer_ids)
    )
    both = sa.union_all(invoiced, paid).subquery()
    total_invoiced = sa.func.sum(both.c.invoiced)
    total_paid = sa.func.sum(both.c.paid)
    sums = sa.select(
        both.c.customer_id,
        both.c.currency,
        total_invoiced,
        total_paid,
        total_invoiced - total_paid,
        sa.func.max(both.c.source_version),
    ).group_by(both.c.customer_id, both.c.currency)
    connection.execute(
        sa.delete(CUSTOMER_BALANCES).where(_among(connection, b.customer_id, customer_ids))
    )
    connection.execute(
        sa.insert(CUSTOMER_BALANCES).from_select(
            ["customer_id", "currency", "invoiced", "paid", "open_balance", "source_version"],
            sums,
        )
    )
