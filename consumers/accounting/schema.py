"""The accounting target's tables (SQLAlchemy Core).

::

    ledger_accounts    one per customer            <- Customers
    invoices           one per order               <- Orders (+ payments applied to it)
    invoice_lines      one per order line          <- OrderDetails
    payments           one per payment             <- Payments
    customer_balances  one per customer, currency  <- invoices and payments (maintained)
    void_invoices      one per deleted order       <- invoices whose order was deleted
    unapplied_payments one per deleted payment     <- payments deleted in the source

An order deleted in the source voids its invoice: the invoice leaves ``invoices``
(which holds the invoices of the orders that exist) for ``void_invoices``, as it
stood, status ``void`` and nothing due, with the version of the delete. A payment
deleted in the source is unapplied: it leaves ``payments`` (so its invoice's
``amount_paid`` and its customer's balance drop) for ``unapplied_payments``. Both
are kept for the record; ``queuestream verify`` compares the other five tables,
which then match a source without those rows. These two tables are new in this
version: ``create_all`` adds them to an existing target.

Every row derived from a source row carries ``source_version``: the source row's
ModifiedDate in microseconds since the epoch (UTC). Writes only replace a row with a
newer version, so a redelivered or older event changes nothing.

``invoices.amount_paid`` / ``balance_due`` and the whole of ``customer_balances``
are derived from several source rows and recomputed by the target at the end of a
batch for what the batch touched. ``customer_balances.source_version`` is the
newest ``source_version`` among the invoices and payments summed into the row.

Money is exact: :class:`~consumers.target_sql.Money` is NUMERIC on
PostgreSQL and integer minor units on SQLite, so SUM() stays exact on both.

There are no foreign keys between these tables on purpose: the instances of a
consumer group write different customers concurrently, and events arrive table by
table, so a payment may arrive before the invoice it pays (it is stored, and
applied to the invoice once that arrives) and a line before its invoice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from consumers.target_sql import DELETED_VERSION, INSERTED_AS, UPDATED_AS, Money, version_column

__all__ = [
    "CANCELED",
    "CUSTOMER_BALANCES",
    "INVOICES",
    "INVOICE_LINES",
    "LEDGER_ACCOUNTS",
    "METADATA",
    "PAYMENTS",
    "STATUS_OPEN",
    "STATUS_VOID",
    "UNAPPLIED_PAYMENTS",
    "VOID_INVOICES",
    "owing",
]

METADATA = sa.MetaData()

#: Exigo's OrderStatusID of a cancelled order: its invoice is void.
CANCELED = 5
#: Invoice status: an order that is not cancelled.
STATUS_OPEN = "open"
#: Invoice status: a cancelled order (OrderStatusID 5); it owes nothing.
STATUS_VOID = "void"

_ZERO = Decimal(0)


def owing(
    row: sa.ColumnCollection[str, sa.ColumnElement[Any]], paid: sa.ColumnElement[Any] | None = None
) -> sa.ColumnElement[Any]:
    """What an invoice ``row`` owes once ``paid`` is paid (None: nothing yet): 0 when void."""
    due = row["total"] if paid is None else row["total"] - paid
    return sa.case((row["status"] == STATUS_VOID, sa.literal_column("0")), else_=due)


def _owing_now(
    row: sa.ColumnCollection[str, sa.ColumnElement[Any]],
    stored: sa.ColumnCollection[str, sa.ColumnElement[Any]],
) -> sa.ColumnElement[Any]:
    """What an invoice updated to ``row`` (its incoming columns) owes, paid what the
    ``stored`` row says: right unless its currency changed (then the payments counted
    change, and the batch recomputes it)."""
    return owing(row, stored["amount_paid"])


LEDGER_ACCOUNTS = sa.Table(
    "ledger_accounts",
    METADATA,
    sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "name",
        sa.String(101),
        nullable=False,
        comment="Customers.Company if not empty, else 'FirstName LastName'",
    ),
    sa.Column("currency", sa.String(3), nullable=False, comment="ISO 4217, upper case"),
    sa.Column("email", sa.String(100), comment="Customers.Email"),
    version_column(),
    comment="One ledger account per customer (from Customers).",
)

INVOICES = sa.Table(
    "invoices",
    METADATA,
    sa.Column(
        "order_id",
        sa.Integer,
        primary_key=True,
        autoincrement=False,
        comment="the invoice number is the order id",
    ),
    sa.Column("customer_id", sa.Integer, nullable=False, index=True),
    sa.Column("currency", sa.String(3), nullable=False, comment="ISO 4217, upper case"),
    sa.Column("invoice_date", sa.DateTime(timezone=True), nullable=False, comment="OrderDate, UTC"),
    sa.Column("subtotal", Money(16, 2), nullable=False, comment="Orders.SubTotal"),
    sa.Column("tax", Money(16, 2), nullable=False, comment="Orders.TaxTotal"),
    sa.Column("shipping", Money(16, 2), nullable=False, comment="Orders.ShippingTotal"),
    sa.Column("total", Money(16, 2), nullable=False, comment="Orders.Total"),
    sa.Column(
        "status",
        sa.String(4),
        nullable=False,
        comment="'void' for a cancelled order (OrderStatusID 5), else 'open'",
    ),
    sa.Column("order_status_id", sa.Integer, nullable=False, comment="Orders.OrderStatusID"),
    sa.Column(
        "amount_paid",
        Money(18, 2),
        nullable=False,
        default=_ZERO,
        comment="sum of the payments applied to this invoice in its currency (maintained)",
    ),
    sa.Column(
        "balance_due",
        Money(18, 2),
        nullable=False,
        default=_ZERO,
        comment="total - amount_paid; 0 when void (maintained); negative means overpaid",
        # A new invoice is inserted owing its total (nothing paid yet, as amount_paid's
        # default says): where no payment came before it, the recomputation at the end
        # of the batch finds it right and does not write it again (consumers.target_sql).
        # An invoice updated owes its new total less what the stored row says was paid:
        # the batch recomputes only the invoices whose payments or currency changed.
        info={INSERTED_AS: owing, UPDATED_AS: _owing_now},
    ),
    version_column(),
    comment="One invoice per order (from Orders).",
)

INVOICE_LINES = sa.Table(
    "invoice_lines",
    METADATA,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False, comment="OrderLine"),
    sa.Column("item_code", sa.String(50), nullable=False, comment="OrderDetails.ItemCode"),
    sa.Column("description", sa.String(200), comment="OrderDetails.ItemDescription"),
    sa.Column("quantity", Money(12, 4), nullable=False, comment="OrderDetails.Quantity"),
    sa.Column("unit_price", Money(16, 4), nullable=False, comment="OrderDetails.PriceEach"),
    sa.Column("amount", Money(16, 2), nullable=False, comment="OrderDetails.PriceTotal"),
    sa.Column("tax", Money(16, 2), nullable=False, comment="OrderDetails.Tax"),
    version_column(),
    comment="One line per order line (from OrderDetails).",
)

PAYMENTS = sa.Table(
    "payments",
    METADATA,
    sa.Column("payment_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False, index=True),
    sa.Column(
        "order_id",
        sa.Integer,
        nullable=False,
        index=True,
        comment="the invoice it is applied to (which may not have arrived yet)",
    ),
    sa.Column(
        "payment_date", sa.DateTime(timezone=True), nullable=False, comment="PaymentDate, UTC"
    ),
    sa.Column("amount", Money(16, 2), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False, comment="ISO 4217, upper case"),
    sa.Column("authorization_code", sa.String(50)),
    version_column(),
    comment="One row per payment (from Payments).",
)

CUSTOMER_BALANCES = sa.Table(
    "customer_balances",
    METADATA,
    sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("currency", sa.String(3), primary_key=True, comment="ISO 4217, upper case"),
    sa.Column("invoiced", Money(18, 2), nullable=False, comment="sum of open invoices' totals"),
    sa.Column("paid", Money(18, 2), nullable=False, comment="sum of all payments"),
    sa.Column(
        "open_balance",
        Money(18, 2),
        nullable=False,
        comment="invoiced - paid; negative is a credit (e.g. payments on a void invoice)",
    ),
    sa.Column(
        "source_version",
        sa.BigInteger,
        nullable=False,
        comment="newest source_version among the invoices and payments summed here",
    ),
    comment=(
        "Per customer and currency with any invoice (open or void) or payment; "
        "recomputed for the customers each batch touches."
    ),
)


def _archive(name: str, of: sa.Table, comment: str) -> sa.Table:
    """A table with ``of``'s columns (no indexes, no defaults) and the delete's version."""
    columns = [
        sa.Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            autoincrement=False,
            comment=c.comment,
        )
        for c in of.columns
    ]
    deleted = sa.Column(
        DELETED_VERSION,
        sa.BigInteger,
        nullable=False,
        comment="the delete's version: the ModifiedDate of the last row image published",
    )
    return sa.Table(name, METADATA, *columns, deleted, comment=comment)


VOID_INVOICES = _archive(
    "void_invoices",
    INVOICES,
    "Invoices whose order was deleted in the source: as they stood, void, nothing due.",
)

UNAPPLIED_PAYMENTS = _archive(
    "unapplied_payments",
    PAYMENTS,
    "Payments deleted in the source: unapplied from their invoice and balance, kept here.",
)
