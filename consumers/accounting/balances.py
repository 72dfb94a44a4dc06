"""What the accounting target maintains: invoice figures and customer balances.

``invoices.amount_paid`` / ``balance_due`` and the whole of ``customer_balances``
are derived from several source rows, and brought up to date at the end of a batch
for what it touched (:class:`Touched`), with set-based SQL (no per-row statements).
The invoices whose order or payments changed are recomputed from their payments.
A balance is kept by deltas (:func:`add_deltas`): :func:`owners` reads, before a
table is written, whom each of its rows belonged to and what it added to that
balance; a row that stays with its customer and currency adds what it adds now less
what it added before, a new row what it adds. Only a customer a row left (moved to
another customer or currency, or deleted) is recomputed from all its invoices and
payments (:func:`recompute_balances`): its newest version may fall, and nothing may
be left to sum. So a refresh's cost follows what it changed, not the customers'
history (with 40 invoices and 20 payments a customer, recomputing one refresh's
2,677 customers took 186 ms against 24 ms without that history; ``make
bench-freshness --history``).

Accounting rules: a void invoice (a cancelled order) owes nothing (``balance_due``
0) and is not invoiced in the balance, but payments made on it still count as paid
(the customer then holds a credit, a negative ``open_balance``). ``amount_paid``
sums the payments applied to an invoice in the invoice's currency. A payment whose
invoice has not arrived counts in the customer's balance at once; it is applied to
the invoice when that arrives. Balances come from invoices and payments only:
deleting a customer's ledger account leaves them.

Members of a consumer group own a customer's rows by partition, but a row moved to
a customer on another member's partitions makes that member recompute the first
customer's balance too, maybe while its owner does. Each brings the customer's rows
to the sums in one statement (updating the rows that stay, deleting those with
nothing left to sum, inserting new ones). Under READ COMMITTED a statement that
waits for another transaction's rows still works from the snapshot it started with,
so a statement that waited for the other member's rows would write sums made without
what that one committed. So on PostgreSQL :func:`recompute_balances` first locks the
customers' balance rows (SELECT ... FOR UPDATE, in key order, in chunks of sorted
ids): the second member waits there, and its statement starts after the first has
committed, seeing what it committed.
A customer with no balance row yet has nothing to lock: two members inserting the
same new key collide on it, and the one that comes second replaces its rows again,
in a savepoint, once the first has committed. Whichever commits last has summed
what the other committed (tests/integration/test_balance_conflicts.py). An invoice
one member inserts while another applies a payment to it is put in order by advisory
locks (:func:`refresh_invoices`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from consumers.accounting.schema import (
    CUSTOMER_BALANCES,
    INVOICES,
    PAYMENTS,
    STATUS_OPEN,
    owing,
)
from consumers.target_sql import dialect_insert, staged
from consumers.target_stage import copy_into_stage, render, stage_table
from queuestream.databases import transaction_note
from queuestream.errors import RetriableError
from queuestream.failures import sqlstate_of
from queuestream.key_sets import KEYS, among, key_chunks

__all__ = [
    "Touched",
    "add_deltas",
    "contribution",
    "inserted_meanwhile",
    "owners",
    "recompute_balances",
    "refresh_invoices",
]

log = logging.getLogger(__name__)

_ZERO: sa.ColumnClause[Any] = sa.literal_column("0")
#: Replacements of one chunk of balances that another transaction's committed rows may
#: refuse before the batch is rolled back and applied again from its offsets.
_REPLACE_ATTEMPTS = 10
_UNIQUE_VIOLATION = "23505"
#: The balance rows of a chunk of customers, locked in key order (PostgreSQL).
_LOCK = (
    sa.select(CUSTOMER_BALANCES.c.customer_id)
    .where(among(CUSTOMER_BALANCES.c.customer_id, "postgresql"))
    .order_by(CUSTOMER_BALANCES.c.customer_id, CUSTOMER_BALANCES.c.currency)
    .with_for_update()
)

#: Advisory locks (PostgreSQL) that order a member inserting an invoice with another
#: applying a payment to it (:func:`_order_with_other_members`): this product's class
#: of lock ("qs", 1) and the order id's bucket; exclusive where ``e``, else shared.
_INVOICE_LOCK_CLASS = 0x71730001
_INVOICE_LOCK_BUCKETS = 256
_INVOICE_LOCKS = sa.text(
    "SELECT count(*) FROM (SELECT CASE WHEN u.e THEN pg_advisory_xact_lock(:c, u.b) "
    "ELSE pg_advisory_xact_lock_shared(:c, u.b) END "
    "FROM (SELECT * FROM unnest(CAST(:b AS int[]), CAST(:e AS bool[])) AS x(b, e) "
    "ORDER BY b) AS u) AS s"
)
#: The note (:func:`~queuestream.databases.transaction_note`) of the invoices a
#: transaction's payments are applied to that it did not see.
_UNSEEN = "queuestream.unseen_invoices"


@dataclass
class Touched:
    """What a batch changed of the maintained figures: balances and invoices to bring
    up to date at its end (:meth:`recompute`)."""

    #: Customers whose balances are recomputed from their invoices and payments: those a
    #: row left (moved to another customer or currency, or deleted), and those whose
    #: invoices lost a line.
    customers: set[int] = field(default_factory=set)
    #: What rows that stayed with their customer and currency, or are new, changed of
    #: each balance: (customer, currency) -> [invoiced, paid, newest version]
    #: (:func:`add_deltas`; not for the customers recomputed, whose sums hold them).
    deltas: dict[tuple[int, str], list[Any]] = field(default_factory=dict)
    invoices: set[int] = field(default_factory=set)
    #: Customers whose ledger account a delete removed (checked for what remains).
    deleted_customers: set[int] = field(default_factory=set)
    #: Invoices this batch inserted, and those a payment it wrote, moved or deleted is
    #: applied to (:func:`refresh_invoices` orders them with other members' batches).
    inserted: set[int] = field(default_factory=set)
    paid: set[int] = field(default_factory=set)

    def add(self, customer: int | None, invoice: int | None, *, by_payment: bool = False) -> None:
        if customer is not None:
            self.customers.add(customer)
        if invoice is not None:
            self.invoices.add(invoice)
            if by_payment:
                self.paid.add(invoice)

    def invoice(self, invoice: int | None, *, by_payment: bool = False) -> None:
        """An invoice whose figures are recomputed (``by_payment``: a payment on it)."""
        self.add(None, invoice, by_payment=by_payment)

    def change(self, customer: int, currency: str, invoiced: Any, paid: Any, version: int) -> None:
        """Add to the balance of ``customer`` in ``currency`` what a row changed of it."""
        held = self.deltas.get((customer, currency))
        if held is None:
            self.deltas[(customer, currency)] = [invoiced, paid, version]
        else:
            held[0] += invoiced
            held[1] += paid
            held[2] = max(held[2], version)

    def recompute(self, connection: sa.Connection) -> None:
        """Bring the invoices' figures, then the customers' balances, up to date."""
        refresh_invoices(connection, self.invoices, self.inserted, self.paid)
        recompute_balances(connection, self.customers)
        add_deltas(connection, {k: v for k, v in self.deltas.items() if k[0] not in self.customers})


def owners(
    connection: sa.Connection,
    table: sa.Table,
    key: tuple[str, ...],
    columns: tuple[str, str | None],
    keys: Sequence[tuple[Any, ...]],
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """key -> (customer, invoice, currency, invoiced, paid) of the stored rows among
    ``keys`` (single-column keys): whom each belongs to, and what it adds to that
    customer's balance in its currency (:func:`contribution`).

    ``columns`` names the customer column and the invoice column (None: no invoice).
    On PostgreSQL the rows are locked as they are read (``FOR UPDATE``, in key order):
    another member that is moving one of them at this moment holds it, and the owner
    read is the one it commits, not the one before it, which would leave the customer
    it moved the row to with a balance that counts it.
    """
    if not keys:
        return {}
    (column,) = key
    customer_column, invoice_column = columns
    invoice = table.c[invoice_column] if invoice_column else sa.null()
    dialect = connection.dialect.name
    invoiced, paid = _CONTRIBUTIONS[table.name]
    query = sa.select(
        table.c[column], table.c[customer_column], invoice, table.c.currency, invoiced, paid
    ).where(among(table.c[column], dialect))
    if dialect == "postgresql":
        query = query.order_by(table.c[column]).with_for_update()
    found: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for chunk in key_chunks(connection, (k for (k,) in keys)):
        for k, *owner in connection.execute(query, {KEYS: chunk}):
            found[(k,)] = tuple(owner)
    return found


#: What a stored row adds to its customer's balance, by table: (invoiced, paid), in SQL.
#: An open invoice is invoiced its total; a payment is paid its amount. The same rule
#: as :func:`contribution` (a row about to be written) and :func:`_sums` (all of them).
_CONTRIBUTIONS: dict[str, tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]] = {
    INVOICES.name: (
        sa.case((INVOICES.c.status == STATUS_OPEN, INVOICES.c.total), else_=_ZERO),
        _ZERO,
    ),
    PAYMENTS.name: (_ZERO, PAYMENTS.c.amount),
}


def contribution(table: str, status: Any, amount: Any) -> tuple[Any, Any]:
    """(invoiced, paid) a row of ``table`` adds to its balance: an invoice its ``amount``
    (the total) when its ``status`` is open, a payment its ``amount`` paid."""
    if table == INVOICES.name:
        return (amount if status == STATUS_OPEN else _NOTHING), _NOTHING
    return _NOTHING, amount


_NOTHING = Decimal(0)  # what a row adds where it adds nothing (amounts are Decimals)


def add_deltas(connection: sa.Connection, deltas: dict[tuple[int, str], list[Any]]) -> None:
    """Add ``deltas`` ((customer, currency) -> [invoiced, paid, version]) to the balances,
    inserting those not there yet, in key order, one statement.

    A delta is what rows that stayed with their customer and currency changed, and rows
    that are new: each sum moves by exactly that, and the newest version can only rise
    (a row is written only when its version is newer than the stored one, which counts in
    the balance's). Two members adding to one balance at once add up: the second waits
    for the first's row and adds to what it committed. One recomputing the customer
    (:func:`recompute_balances`) locks the rows first and sums what is committed, so
    whichever comes second counts the other's change. Rows that left a balance (moved
    or deleted) are not deltas: their customer is recomputed, as the newest version may
    fall and nothing may be left to sum.
    """
    if not deltas:
        return
    rows = [
        (customer, currency, invoiced, paid, invoiced - paid, version)
        for (customer, currency), (invoiced, paid, version) in sorted(deltas.items())
    ]
    if staged(connection):  # PostgreSQL: by COPY into a staging table, one merge
        copy_into_stage(connection, _DELTA_STAGE, rows, [_ADD_STAGED_DELTAS])
        return
    # SQLite, and PostgreSQL with staged writes off (the staged path's reference)
    insert = dialect_insert(connection.dialect.name)(CUSTOMER_BALANCES)
    connection.execute(
        _adding(insert), [dict(zip(_BALANCE_COLUMNS, row, strict=True)) for row in rows]
    )


def _adding(insert: Any) -> Any:
    """``insert`` (of balances, PostgreSQL's or SQLite's) ON CONFLICT adding its row to
    the stored one, the version the newer of the two."""
    b, new = CUSTOMER_BALANCES.c, insert.excluded
    return insert.on_conflict_do_update(
        index_elements=["customer_id", "currency"],
        set_={
            "invoiced": b.invoiced + new.invoiced,
            "paid": b.paid + new.paid,
            "open_balance": b.open_balance + new.open_balance,
            "source_version": sa.case(  # the newer (in either dialect)
                (b.source_version >= new.source_version, b.source_version),
                else_=new.source_version,
            ),
        },
    )


def inserted_meanwhile(
    connection: sa.Connection, table: sa.Table, key: tuple[str, ...], keys: Sequence[Any]
) -> list[Any]:
    """Of ``keys`` (rows this transaction has just upserted, for which :func:`owners`
    found no stored row), those that another transaction inserted after that read.

    The upsert waited for that transaction and updated its row instead of inserting
    one, so whom the row belonged to before was never read: a member moving an order
    while another member inserts it. On PostgreSQL a row version an upsert updated
    carries this transaction's lock (``xmax`` not 0), one it inserted does not; a
    SQLite target has one writer at a time, and nothing to find.
    """
    if not keys or connection.dialect.name != "postgresql":
        return []
    (column,) = key
    query = sa.select(table.c[column]).where(
        among(table.c[column], "postgresql"), sa.literal_column("xmax::text") != "0"
    )
    found: list[Any] = []
    for chunk in key_chunks(connection, keys):
        found.extend(k for (k,) in connection.execute(query, {KEYS: chunk}))
    return found


def refresh_invoices(
    connection: sa.Connection,
    order_ids: Iterable[int],
    inserted: Iterable[int] = (),
    paid: Iterable[int] = (),
) -> None:
    """Recompute amount_paid and balance_due of these invoices from the payments table.

    One UPDATE ... FROM a chunk, over the payments summed per invoice (in its
    currency); rows whose figures are already right are not written again. On
    PostgreSQL, ``inserted`` (invoices this batch inserted) and ``paid`` (those its
    payments are applied to) are first put in order with other members' batches
    (:func:`_order_with_other_members`).
    """
    if connection.dialect.name == "postgresql":
        _order_with_other_members(connection, set(inserted), set(paid))
    _recompute_invoices(connection, order_ids)


def _recompute_invoices(connection: sa.Connection, order_ids: Iterable[int]) -> None:
    """amount_paid and balance_due of these invoices from the payments applied to them.

    The payments are picked by the chunk's order ids too (``among`` on their order id),
    not only by the join to the chunk's invoices: the planner then reads them through
    their index, so the cost follows the chunk and not the payments table. Joined
    only, it scanned the whole table and probed every payment against the chunk: with
    a history of 40 invoices and 20 payments a customer (1,152,278 invoices, 559,403
    payments), 67.7 ms for one refresh's 2,800 invoices against 15.5 ms picked, where at
    the freshness benchmark's size (78,000 invoices) it is 18.6 against 20.2 ms.
    """
    i, p = INVOICES.c, PAYMENTS.c
    invoice = INVOICES.alias("invoice")
    applied = sa.and_(
        p.order_id == invoice.c.order_id,
        p.currency == invoice.c.currency,
        among(p.order_id, connection.dialect.name),
    )
    sums = (
        sa.select(invoice.c.order_id, sa.func.coalesce(sa.func.sum(p.amount), _ZERO).label("paid"))
        .select_from(invoice.outerjoin(PAYMENTS, applied))
        .where(among(invoice.c.order_id, connection.dialect.name))
        .group_by(invoice.c.order_id)
        .subquery("sums")
    )
    due = owing(i, sums.c.paid)
    statement = (
        sa.update(INVOICES)
        .where(
            # the chunk's keys again: the invoices read by key, not the whole table scanned
            among(i.order_id, connection.dialect.name),
            i.order_id == sums.c.order_id,
            sa.or_(i.amount_paid != sums.c.paid, i.balance_due != due),
        )
        .values(amount_paid=sums.c.paid, balance_due=due)
    )
    for chunk in key_chunks(connection, order_ids):
        connection.execute(statement, {KEYS: chunk})


def _visible(connection: sa.Connection, order_ids: Iterable[int]) -> set[int]:
    """Those of ``order_ids`` whose invoice this transaction sees."""
    query = sa.select(INVOICES.c.order_id).where(among(INVOICES.c.order_id, "postgresql"))
    found: set[int] = set()
    for chunk in key_chunks(connection, order_ids):
        found.update(k for (k,) in connection.execute(query, {KEYS: chunk}))
    return found


def _lock_invoices(connection: sa.Connection, shared: set[int], exclusive: set[int]) -> None:
    """The invoice locks of these order ids' buckets, in bucket order in one statement
    (exclusive where a bucket holds one of ``exclusive``)."""
    wanted = {k % _INVOICE_LOCK_BUCKETS for k in exclusive}
    buckets = sorted(wanted | {k % _INVOICE_LOCK_BUCKETS for k in shared})
    if buckets:
        connection.execute(
            _INVOICE_LOCKS,
            {"c": _INVOICE_LOCK_CLASS, "b": buckets, "e": [b in wanted for b in buckets]},
        )


def _order_with_other_members(
    connection: sa.Connection, inserted: set[int], paid: set[int]
) -> None:
    """Make a member applying a payment to an invoice this batch inserts wait for this
    batch, and note the invoices this batch's payments are applied to that it cannot
    see (PostgreSQL; the locks are held until the commit).

    A payment's invoice may be inserted by another member at the same moment (the
    order on its partitions, the payment on this one's). Neither transaction sees the
    other's row: this one finds no invoice to apply the payment to, that one sums the
    payments it can see, and the invoice would never count the payment. So a batch
    takes a shared lock for each invoice it inserts, here; the invoices its payments
    are applied to that it cannot see are noted, and once the batch has applied all
    its parts, :func:`order_unseen_invoices` takes an exclusive lock for those still
    unseen and recomputes them after it, seeing what the other committed.

    The exclusive locks wait until the commit because a batch applied in parts
    (:mod:`consumers.streaming`) often holds a refresh's payments before its orders:
    taken at once, they were held through the rest of the transaction, and every
    other member inserting invoices waited for it (a rebuild's two workers took 37,572
    rows/s before these locks, 15,643-20,141 with them taken at once).

    Locks are taken by bucket of the order id (:data:`_INVOICE_LOCK_BUCKETS` at most a
    batch), in bucket order in each statement. A batch that waits for another which
    waits for it (each holding a shared lock the other's exclusive one wants) is a
    deadlock PostgreSQL breaks, and the batch is applied again, as any. Batches that
    only insert invoices share them.
    """
    _lock_invoices(connection, inserted, set())
    if paid:
        unseen = paid - _visible(connection, paid)
        if unseen:
            noted = transaction_note(connection, _UNSEEN)
            if noted is None:  # no transaction to wait for the end of: at once
                _lock_invoices(connection, set(), unseen)
            else:
                noted.update(unseen)


def order_unseen_invoices(connection: sa.Connection) -> None:
    """Before the commit: wait for any member inserting the invoices this transaction's
    payments are applied to but did not see, and recompute those invoices
    (:func:`_order_with_other_members`)."""
    noted = transaction_note(connection, _UNSEEN)
    if not noted:
        return
    unseen = set(noted)
    noted.clear()
    _lock_invoices(connection, set(), unseen - _visible(connection, unseen))
    _recompute_invoices(connection, unseen)


def recompute_balances(connection: sa.Connection, customer_ids: Iterable[int]) -> None:
    """Bring the balances of these customers to the SUMs over their invoices and payments.

    On PostgreSQL one statement a chunk (:func:`_replacement`) updates the rows that
    stay in place, inserts the new ones and deletes those with nothing left to sum; on
    SQLite the chunk's rows are deleted and inserted again. Money columns hold the same
    scale (2) everywhere, so on SQLite the integer minor units add up exactly and are
    copied as they are.
    """
    dialect = connection.dialect.name
    sums = _sums(dialect)
    if dialect == "postgresql":
        replace = _replacement(sums)
        for chunk in key_chunks(connection, customer_ids):
            _replace_concurrently(connection, replace, chunk)
        return
    # SQLite: one writer at a time
    delete = sa.delete(CUSTOMER_BALANCES).where(among(CUSTOMER_BALANCES.c.customer_id, dialect))
    insert = sa.insert(CUSTOMER_BALANCES).from_select(list(_BALANCE_COLUMNS), sums)
    for chunk in key_chunks(connection, customer_ids):
        connection.execute(delete, {KEYS: chunk})
        connection.execute(insert, {KEYS: chunk})


#: The columns of a balance, in the order :func:`_sums` gives them.
_BALANCE_COLUMNS = ("customer_id", "currency", "invoiced", "paid", "open_balance", "source_version")


def _sums(dialect: str) -> sa.Select[Any]:
    """The balances of the customers among :data:`KEYS`, from their invoices and payments
    (:data:`_BALANCE_COLUMNS`)."""
    each = [
        sa.select(
            t.c.customer_id,
            t.c.currency,
            invoiced.label("invoiced"),
            paid.label("paid"),
            t.c.source_version,
        ).where(among(t.c.customer_id, dialect))
        for t in (INVOICES, PAYMENTS)
        for invoiced, paid in [_CONTRIBUTIONS[t.name]]
    ]
    both = sa.union_all(*each).subquery()
    total_invoiced = sa.func.sum(both.c.invoiced)
    total_paid = sa.func.sum(both.c.paid)
    columns = (
        both.c.customer_id,
        both.c.currency,
        total_invoiced,
        total_paid,
        total_invoiced - total_paid,
        sa.func.max(both.c.source_version),
    )
    return sa.select(
        *(c.label(name) for c, name in zip(columns, _BALANCE_COLUMNS, strict=True))
    ).group_by(both.c.customer_id, both.c.currency)


def _replacement(sums: sa.Select[Any]) -> sa.Insert:
    """One statement (PostgreSQL) that makes the balances of the customers among
    :data:`KEYS` what ``sums`` says: an UPDATE of the rows whose figures changed, a
    DELETE of those no invoice or payment is left for, and an INSERT of the new ones.

    Updated in place, a balance stays on its page (a HOT update: no index entry, and the
    page's old versions pruned as it goes) where replacing every row (DELETE, INSERT)
    left all of them dead each time: in ``make bench-freshness`` the table held twice
    as many dead rows as live ones between vacuums, and every statement that reads it
    read those too.
    """
    b = CUSTOMER_BALANCES
    found = sums.cte("sums")
    same_key = sa.and_(b.c.customer_id == found.c.customer_id, b.c.currency == found.c.currency)
    figures = [c for c in _BALANCE_COLUMNS if c not in ("customer_id", "currency")]
    changed = (
        sa.update(b)
        .where(
            same_key,
            sa.tuple_(*(b.c[c] for c in figures)).is_distinct_from(
                sa.tuple_(*(found.c[c] for c in figures))
            ),
        )
        .values({c: found.c[c] for c in figures})
        .returning(b.c.customer_id)
        .cte("changed")
    )
    gone = (
        sa.delete(b)
        .where(among(b.c.customer_id, "postgresql"), ~sa.exists().where(same_key))
        .returning(b.c.customer_id)
        .cte("gone")
    )
    new = sa.select(*(found.c[c] for c in _BALANCE_COLUMNS)).where(~sa.exists().where(same_key))
    return sa.insert(b).from_select(list(_BALANCE_COLUMNS), new).add_cte(changed, gone)


def _replace_concurrently(connection: sa.Connection, replace: sa.Insert, chunk: list[Any]) -> None:
    """Lock a chunk of balances and replace them (:func:`_replacement`), in a savepoint;
    again while a transaction that committed meanwhile (another member) inserted rows
    under new keys of the same customers.

    The replacement is one statement after the lock, so its snapshot holds what the
    members that held the locked rows committed. The rows it changes are those it
    locked, and those another member committed under new keys of the same customers
    before it began (that member held no row of the customer this one locks, or it
    would have waited, so those rows are already summed here). A key another member
    inserts and commits while it runs makes its INSERT fail on the key, and the
    savepoint is replaced again, seeing that commit."""
    for attempt in range(1, _REPLACE_ATTEMPTS + 1):
        try:
            with connection.begin_nested():
                connection.execute(_LOCK, {KEYS: chunk}).all()
                connection.execute(replace, {KEYS: chunk})
        except sa.exc.IntegrityError as exc:
            if not _balance_key_taken(exc):
                raise
            log.info(
                "another transaction (a member of the group) committed a new balance of "
                "the same customers while this one replaced them (attempt %d of %d); "
                "replacing them again, from what it committed",
                attempt,
                _REPLACE_ATTEMPTS,
            )
            continue
        return
    msg = (
        f"customer balances were replaced by other transactions {_REPLACE_ATTEMPTS} times "
        "while this batch replaced them; it is rolled back and applied again"
    )
    raise RetriableError(msg)


def _balance_key_taken(exc: sa.exc.IntegrityError) -> bool:
    """Is ``exc`` a row of customer_balances that another transaction inserted?"""
    diag = getattr(exc.orig, "diag", None)
    return (
        sqlstate_of(exc) == _UNIQUE_VIOLATION
        and getattr(diag, "table_name", None) == CUSTOMER_BALANCES.name
    )


#: The staging table of the deltas, and their merge from it (:mod:`consumers.target_stage`).
_DELTA_STAGE = stage_table(CUSTOMER_BALANCES, _BALANCE_COLUMNS, "add")
_ADD_STAGED_DELTAS = render(
    _adding(
        postgresql.insert(CUSTOMER_BALANCES).from_select(
            list(_BALANCE_COLUMNS), sa.select(*_DELTA_STAGE.columns)
        )
    )
)
