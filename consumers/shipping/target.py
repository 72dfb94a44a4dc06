# mypy sees queuestream.* (setuptools package-dir mapping) as untyped, so Target is Any.
# mypy: allow-subclassing-any
"""The shipping sample target: shipments (with their lines) of the orders that can ship.

Source table      target table     key
CustomerSites  -> ship_to_sites    customer_id         (mirror)
Orders         -> order_headers    order_id            (mirror, every status)
OrderDetails   -> order_lines      (order_id, line)    (mirror)
(derived)         shipments        order_id
(view)            shipment_lines   (order_id, line)    shipments JOIN order_lines

See :mod:`consumers.shipping.schema` for the columns.

How a batch is applied (:meth:`ShippingTarget.apply`), inside the runtime's
transaction:

1. Every change is validated in Python before any SQL: text fits its column (and
   holds no NUL or non-UTF-8 character), the OrderStatusID is one Exigo knows, ids
   are integers, quantities and weights fit their NUMERIC, timestamps are aware. A
   failing record goes to ``report.reject`` with a RecordError naming table, key and
   column and is skipped; the rest of the batch is applied.
2. The mirrors, in foreign-key order (customer_sites, orders, order_details): one
   change per key survives (:func:`latest_per_key`), upserts go out together (an
   equal or older version changes nothing, as in :func:`upsert_versioned`) and
   deletes through :func:`delete_versioned`.
3. The shipments of the orders whose mirror row changed are derived by one
   ``INSERT ... SELECT ... ON CONFLICT`` per chunk of orders, from what is stored
   now: the order, its shipment, its customer's site. Within a batch the mirrors,
   order_lines included, are written before any shipment is derived.
4. One UPDATE moves the ship-to of the open shipments of the customers whose site
   changed (and that have no address of their own) to the new address.
5. An order deleted in the source (op 'd') takes its shipment with it, whatever the
   shipment's status: a shipment is derived from its order and shows its order's
   lines, which go too.

Shipment rules (OrderStatusID: 2 Pending, 5 Canceled, 8 Accepted, 9 Printed,
10 Shipped):

- An order gets a shipment once the target sees it Accepted (8), Printed (9) or
  Shipped (10): status ``ready``, ``printed`` or ``shipped``. A Pending order has
  none; an order cancelled before the target saw it shippable gets none either.
- The target sees every version of an order the batch carries, not only the newest:
  when a batch holds several versions of an order, one of them shippable, those newer
  than the stored row are applied one after another (each deriving the shipment) and
  the newest last. An order that went Accepted -> Canceled within one batch therefore
  ends with a ``canceled`` shipment, as it would over two batches: the result does
  not depend on where batches are cut. (It does depend on the refreshes: an order
  that went Pending -> Accepted -> Canceled between two refreshes was never
  published Accepted and gets no shipment.)
- Cancellation (5), or any other status outside 8/9/10, cancels a shipment that has
  not shipped (``canceled``); an order accepted again reopens it.
- ``shipped`` is final: a shipment is never un-shipped. An order Canceled after it
  shipped keeps ``shipped`` and sets ``cancel_requested`` (a return to organise);
  ``cancel_requested`` is true while the order is Canceled. An order the target first
  sees Canceled with a ShippedDate was cancelled after shipping: it gets a
  ``shipped`` shipment with ``cancel_requested``.
- Tracking number and shipped date are the order's TrackingNumber1 and ShippedDate
  (a shipped shipment keeps its own if the order's are cleared).
- Ship-to: the order's own name, company and address when it has one (Address1 not
  NULL), else the customer's site's (``ship_to_source`` ``order`` / ``site``;
  ``none`` while the site has not arrived). While a shipment is open (ready,
  printed) its ship-to follows the order and the current site, so an address edit
  of the site moves the open shipments of that customer that have no address of
  their own. Once shipped or canceled the ship-to is frozen as it was then (from the
  mirrors as they stand when the batch that shipped it is applied); only a shipment
  frozen with ``none`` still takes the site's address when it arrives. A site
  deleted in the source leaves the open shipments that used it with ``none``.
- ``created_version`` is the order version that created the shipment;
  ``source_version`` the order version it was last derived from (a site address
  change moves the ship-to, not the version).

Counting: ``report.applied["<target table>.<op>"]`` counts rows the batch changed
(inserted, updated or deleted), by the op of the event that changed them; derived
shipments count as ``shipments.c`` (new), ``shipments.u`` (changed, also by a site
address) and ``shipments.d`` (removed with their order). ``report.stale["<source
table>"]`` counts valid events that changed nothing: redelivered, older than the
stored row, or superseded by a newer event of the same key in the batch.

There are no database foreign keys between the tables: the instances of a consumer
group write different customers concurrently, and a row may arrive before the row it
refers to.

On PostgreSQL keys travel as one array, not thousands of parameters (see
:func:`_among`); the result is that of an IN list.

Reconciliation (:meth:`ShippingTarget.expected`, :meth:`ShippingTarget.actual`)
compares the three mirrors in full, and ``shipments`` / ``shipment_lines`` for the
orders the source says must have one: status 8, 9 or 10, or Canceled with a
ShippedDate (shipped, cancel requested): customer, status, cancel_requested,
warehouse, ship method, tracking number, shipped date, version, and the lines'
items and quantities. What cannot be recomputed from the source's current rows is
left out on both sides:

- ``canceled`` shipments: whether a cancelled order ever had a shipment depends on
  whether the target saw it shippable, which the source does not record (a
  cancelled order whose shipment is not canceled still shows, as an unexpected row);
- the ship-to of a shipped or canceled shipment that came from the customer's site:
  it was frozen then, and the site may have changed since. The ship-to is compared
  for open shipments and for shipments addressed with the order's own address.

Not recomputable either, and so reported by verify should the source do it (the
simulator never does): an order's own address edited after it shipped (the shipment
keeps the old one), and an order moved back from Shipped (its shipment stays
shipped).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from consumers.changes import Change, version_of
from consumers.reconcile import TableImage
from consumers.shipping.schema import (
    METADATA,
    OPEN_STATUSES,
    ORDER_HEADERS,
    ORDER_LINES,
    SHIP_TO_COLUMNS,
    SHIP_TO_NONE,
    SHIP_TO_ORDER,
    SHIP_TO_SITE,
    SHIP_TO_SITES,
    SHIPMENT_LINES,
    SHIPMENTS,
    STATUS_CANCELED,
    STATUS_PRINTED,
    STATUS_READY,
    STATUS_SHIPPED,
    full_name,
)
from consumers.target import (
    ApplyReport,
    Money,
    Target,
    check_length,
    delete_versioned,
    latest_per_key,
    upsert_versioned,
)
from queuestream.errors import RecordError
from queuestream.sync_schema import ORDER_STATUS, source_table, to_aware
from queuestream.tables import TABLES_BY_NAME

__all__ = ["ShippingTarget"]

log = logging.getLogger(__name__)

#: Exigo OrderStatusIDs that matter to shipping.
CANCELED, ACCEPTED, PRINTED, SHIPPED = 5, 8, 9, 10
_SHIPPABLE = {ACCEPTED: STATUS_READY, PRINTED: STATUS_PRINTED, SHIPPED: STATUS_SHIPPED}
_FINAL = (STATUS_SHIPPED, STATUS_CANCELED)

#: Keys per statement: one parameter each on SQLite (well below its limit of 32766),
#: one array parameter on PostgreSQL.
_CHUNK = {"sqlite": 2000, "postgresql": 50_000}
_SHIP_TO = tuple(f"ship_to_{c}" for c in SHIP_TO_COLUMNS)
_ORDER_SHIP = tuple(f"ship_{c}" for c in SHIP_TO_COLUMNS)


# -- validation and mapping (pure Python, per record) -----------------------------------
def _error(change: Change, column: str, reason: str) -> RecordError:
    return RecordError(reason, table=change.table, key=dict(change.key), column=column)


def _limit(column: sa.Column[Any]) -> int:
    length = cast("sa.String", column.type).length
    assert length is not None
    return length


#: Source columns of the name, company and address, by target column (without prefix).
_ADDRESS_SOURCES = {
    "company": "Company",
    "address1": "Address1",
    "address2": "Address2",
    "city": "City",
    "state": "State",
    "zip": "Zip",
    "country": "Country",
}

_Texts = tuple[tuple[str, str, int], ...]  # (target column, source column, length)
_Integers = tuple[tuple[str, str], ...]  # (target column, source column)


def _address_texts(table: sa.Table, prefix: str) -> _Texts:
    """The checks of the name parts (``_first``, ``_last``), company and address."""
    half = _limit(table.c[f"{prefix}name"]) // 2  # "First Last" fits
    return (
        ("_first", "FirstName", half),
        ("_last", "LastName", half),
        *(
            (f"{prefix}{c}", source, _limit(table.c[f"{prefix}{c}"]))
            for c, source in _ADDRESS_SOURCES.items()
        ),
    )


def _join_name(found: dict[str, Any], target: str) -> None:
    """Replace the checked ``_first`` and ``_last`` by 'First Last' in ``target``."""
    found[target] = full_name(found.pop("_first"), found.pop("_last"))


def _columns(change: Change, integers: _Integers, texts: _Texts) -> dict[str, Any]:
    """Required integers and texts that fit, by target column; else a RecordError.

    Table-driven and inline, as this runs for every event: ``check_length`` only
    builds the error of a text that does not fit. Text the database cannot store
    (a NUL character, or a lone surrogate from bytes that were not UTF-8) is refused
    here too, so that it names its record instead of failing the whole batch.
    """
    row = change.row
    assert row is not None
    found: dict[str, Any] = {}
    for target, source in integers:
        value = row.get(source)
        if type(value) is not int:
            raise _error(change, source, f"{value!r} is not an integer (required)")
        found[target] = value
    for target, source, limit in texts:
        value = row.get(source)
        if value is not None:
            if len(value) > limit:
                check_length(change, source, limit)  # raises, naming the column
            if "\x00" in value or not (value.isascii() or _utf8(value)):
                raise _error(change, source, "text with a NUL character or not UTF-8")
        found[target] = value
    return found


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Numeric:
    """A NUMERIC(precision, scale) column's bounds, computed once."""

    precision: int
    scale: int
    bound: Decimal  # the least absolute value that does not fit
    step: Decimal

    @classmethod
    def of(cls, column: sa.Column[Any]) -> _Numeric:
        kind = column.type
        assert isinstance(kind, Money)
        p, s = kind.precision, kind.scale
        return cls(p, s, Decimal(10) ** (p - s), Decimal(1).scaleb(-s))


def _decimal(change: Change, column: str, numeric: _Numeric, *, required: bool) -> Any:
    """The decimal in ``column`` if it fits ``numeric`` exactly (or None)."""
    assert change.row is not None
    value = change.row.get(column)
    if value is None:
        if required:
            raise _error(change, column, "NULL in a column the shipping target requires")
        return None
    if type(value) is int:
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise _error(change, column, f"{value!r} is not a finite decimal")
    if abs(value) >= numeric.bound:
        kind = f"decimal({numeric.precision},{numeric.scale})"
        raise _error(change, column, f"{value} does not fit {kind}")
    if value != value.quantize(numeric.step):
        raise _error(change, column, f"{value} has more than {numeric.scale} decimal places")
    return value


def _instant(change: Change, column: str) -> datetime | None:
    assert change.row is not None
    value = change.row.get(column)
    if value is None:
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _error(change, column, f"{value!r} is not a timezone-aware timestamp")
    return value.astimezone(UTC)


_SITE_INTEGERS: _Integers = (("customer_id", "CustomerID"),)
_SITE_TEXTS = _address_texts(SHIP_TO_SITES, "")


def _site_row(change: Change) -> dict[str, Any]:
    found = _columns(change, _SITE_INTEGERS, _SITE_TEXTS)
    _join_name(found, "name")
    found["source_version"] = change.version
    return found


_ORDER_INTEGERS: _Integers = (
    ("order_id", "OrderID"),
    ("customer_id", "CustomerID"),
    ("status_id", "OrderStatusID"),
    ("warehouse_id", "WarehouseID"),
    ("ship_method_id", "ShipMethodID"),
)
_ORDER_TEXTS = (
    *_address_texts(ORDER_HEADERS, "ship_"),
    ("tracking_number", "TrackingNumber1", _limit(ORDER_HEADERS.c.tracking_number)),
)


def _order_row(change: Change) -> dict[str, Any]:
    found = _columns(change, _ORDER_INTEGERS, _ORDER_TEXTS)
    if found["status_id"] not in ORDER_STATUS:
        known = ", ".join(f"{k} {v}" for k, v in ORDER_STATUS.items())
        reason = f"unknown order status {found['status_id']} (known: {known})"
        raise _error(change, "OrderStatusID", reason)
    _join_name(found, "ship_name")
    found["shipped_date"] = _instant(change, "ShippedDate")
    found["source_version"] = change.version
    return found


_LINE_INTEGERS: _Integers = (("order_id", "OrderID"), ("line", "OrderLine"))
_QUANTITY = _Numeric.of(ORDER_LINES.c.quantity)
_WEIGHT = _Numeric.of(ORDER_LINES.c.weight_each)
_LINE_TEXTS: _Texts = (
    ("item_code", "ItemCode", _limit(ORDER_LINES.c.item_code)),
    ("description", "ItemDescription", _limit(ORDER_LINES.c.description)),
)


def _line_row(change: Change) -> dict[str, Any]:
    found = _columns(change, _LINE_INTEGERS, _LINE_TEXTS)
    if found["item_code"] is None:
        raise _error(change, "ItemCode", "NULL in a column the shipping target requires")
    found["quantity"] = _decimal(change, "Quantity", _QUANTITY, required=True)
    found["weight_each"] = _decimal(change, "WeightEach", _WEIGHT, required=False)
    found["source_version"] = change.version
    return found


# -- one source table into its mirror ----------------------------------------------------
@dataclass
class _Validated:
    """The changes of one source table that passed validation, mapped to mirror rows."""

    table: str
    valid: list[Change] = field(default_factory=list)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(change) -> row
    winners: list[Change] = field(default_factory=list)
    applied: int = 0  # rows changed so far by these changes


@dataclass
class _Written:
    changed: list[dict[str, Any]]  # the mirror rows the winners wrote
    deleted: list[tuple[Any, ...]]  # keys of valid deletes (applied or not)


def _validate(
    table: str,
    batch: Sequence[Change],
    to_row: Callable[[Change], dict[str, Any]],
    report: ApplyReport,
) -> _Validated:
    found = _Validated(table)
    for change in batch:
        if not change.is_delete:
            try:
                found.rows[id(change)] = to_row(change)
            except RecordError as error:
                report.reject(change, error)
                continue
        found.valid.append(change)
    found.winners = latest_per_key(found.valid, TABLES_BY_NAME[table].key)
    return found


def _upsert_changes(
    connection: sa.Connection,
    found: _Validated,
    target: sa.Table,
    changes: Sequence[Change],
    report: ApplyReport,
) -> list[dict[str, Any]]:
    """Upsert the rows of ``changes`` (one per key); the rows that changed, counted."""
    key = tuple(c.name for c in target.primary_key.columns)
    rows = [found.rows[id(c)] for c in changes]
    by_key = {tuple(r[k] for k in key): (c, r) for c, r in zip(changes, rows, strict=True)}
    changed = []
    for values in upsert_versioned(connection, target, rows, key):
        change, row = by_key[values]
        report.applied[f"{target.name}.{change.op}"] += 1
        changed.append(row)
    found.applied += len(changed)
    return changed


def _write(
    connection: sa.Connection, found: _Validated, target: sa.Table, report: ApplyReport
) -> _Written:
    """Upsert and delete the winners of ``found``; count the valid changes left stale."""
    upserts = [w for w in found.winners if not w.is_delete]
    changed = _upsert_changes(connection, found, target, upserts, report)
    key = tuple(c.name for c in target.primary_key.columns)
    source_key = TABLES_BY_NAME[found.table].key
    pairs = [(w.key_tuple(source_key), w.version) for w in found.winners if w.is_delete]
    removed = delete_versioned(connection, target, pairs, key) if pairs else 0
    if removed:
        report.applied[f"{target.name}.d"] += removed
    stale = len(found.valid) - found.applied - removed
    if stale:
        report.stale[found.table] += stale
    log.getChild(found.table).debug(
        "%s: %d valid events, %d rows changed, %d stale",
        target.name,
        len(found.valid),
        found.applied + removed,
        stale,
    )
    return _Written(changed, [k for k, _ in pairs])


def _chunks(connection: sa.Connection, values: Iterable[Any]) -> Iterator[list[Any]]:
    ordered = sorted(values)
    size = _CHUNK.get(connection.dialect.name, 1000)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def _among(column: sa.ColumnElement[int], dialect: str) -> sa.ColumnElement[bool]:
    """``column`` among the integers of the bound parameter ``keys``.

    On PostgreSQL ``IN (SELECT unnest(:keys))`` with one array: an IN list of thousands
    of parameters costs tens of milliseconds to send and plan, and the planner
    estimates a few rows for unnest, so the generic plan psycopg's prepared statements
    end up with still looks keys up by index. An expanding IN on SQLite.
    """
    if dialect == "postgresql":
        keys = sa.bindparam("keys", type_=postgresql.ARRAY(sa.Integer))
        return column.in_(sa.select(sa.func.unnest(keys)))
    return column.in_(sa.bindparam("keys", expanding=True))


def _earlier_versions(connection: sa.Connection, found: _Validated) -> list[list[Change]]:
    """The versions of orders in the batch to apply before their newest, in rounds.

    An order with several versions in the batch, one of them shippable, has each of
    its versions newer than the stored row applied (and its shipment derived) in
    version order, so that the batch ends as a sequence of batches would. Round ``i``
    holds the ``i``-th such version of each of those orders; the newest versions are
    written afterwards with everything else. One SELECT per chunk reads the stored
    versions.
    """
    versions: dict[int, list[Change]] = {}
    for change in found.valid:
        if not change.is_delete:
            versions.setdefault(change.key["OrderID"], []).append(change)
    several = {
        k: changes
        for k, changes in versions.items()
        if len(changes) > 1 and any(found.rows[id(c)]["status_id"] in _SHIPPABLE for c in changes)
    }
    if not several:
        return []
    stored: dict[int, int] = {}
    h = ORDER_HEADERS.c
    query = sa.select(h.order_id, h.source_version).where(
        _among(h.order_id, connection.dialect.name)
    )
    for chunk in _chunks(connection, several):
        stored.update((k, v) for k, v in connection.execute(query, {"keys": chunk}))
    winners = {id(w) for w in found.winners}
    rounds: list[list[Change]] = []
    for k, changes in several.items():
        floor = stored.get(k, -1)
        earlier = [c for c in changes if c.version > floor and id(c) not in winners]
        earlier.sort(key=lambda c: c.version)
        for i, change in enumerate(earlier):
            if i == len(rounds):
                rounds.append([])
            rounds[i].append(change)
    return rounds


# -- shipments (set-based SQL) -------------------------------------------------------------
def _derive_shipments(
    connection: sa.Connection, order_ids: Iterable[int], report: ApplyReport
) -> None:
    """Derive the shipments of these orders from the stored state, in one statement a chunk."""
    statement = _derive_statement(connection.dialect.name)
    for chunk in _chunks(connection, order_ids):
        for _order, created, version in connection.execute(statement, {"keys": chunk}):
            report.applied["shipments.c" if created == version else "shipments.u"] += 1


#: The columns of the stored shipment the rules read.
_OLD_COLUMNS = (
    "order_id",
    "status",
    "ship_to_source",
    *_SHIP_TO,
    "tracking_number",
    "shipped_at",
    "created_version",
)


@functools.cache
def _derive_statement(dialect: str) -> Any:
    """INSERT INTO shipments SELECT <the rules> FROM order_headers, shipments, ship_to_sites.

    The rules are in the module docstring; here they are CASE expressions over the
    order (``o``), its stored shipment (``old_*``) and its customer's site (``site_*``).
    """
    o, old, site = ORDER_HEADERS.c, SHIPMENTS.c, SHIP_TO_SITES.c
    shipped = sa.or_(
        old.status == STATUS_SHIPPED,
        o.status_id == SHIPPED,
        sa.and_(o.status_id == CANCELED, o.shipped_date.is_not(None)),
    )
    status = sa.case(
        (shipped, STATUS_SHIPPED),
        (o.status_id == ACCEPTED, STATUS_READY),
        (o.status_id == PRINTED, STATUS_PRINTED),
        (old.order_id.is_not(None), STATUS_CANCELED),  # withdrawn: cancels what is open
        else_=sa.null(),
    )
    state = (
        sa.select(
            *o,
            status.label("status"),
            *(old[c].label(f"old_{c}") for c in _OLD_COLUMNS),
            *(site[c].label(f"site_{c}") for c in ("customer_id", *SHIP_TO_COLUMNS)),
        )
        .select_from(
            ORDER_HEADERS.outerjoin(SHIPMENTS, old.order_id == o.order_id).outerjoin(
                SHIP_TO_SITES, site.customer_id == o.customer_id
            )
        )
        .where(_among(o.order_id, dialect))
        .subquery("state")
    )
    s = state.c
    is_shipped = s.status == STATUS_SHIPPED
    frozen = sa.and_(
        s.old_status == s.status,
        s.status.in_(_FINAL),
        s.old_ship_to_source != SHIP_TO_NONE,
    )
    own = s.ship_address1.is_not(None)
    has_site = s.site_customer_id.is_not(None)

    def ship_to(column: str) -> Any:
        return sa.case(
            (frozen, s[f"old_ship_to_{column}"]),
            (own, s[f"ship_{column}"]),
            (has_site, s[f"site_{column}"]),
            else_=sa.null(),
        )

    values = {
        "order_id": s.order_id,
        "customer_id": s.customer_id,
        "status": s.status,
        "cancel_requested": sa.case(
            (sa.and_(is_shipped, s.status_id == CANCELED), sa.true()), else_=sa.false()
        ),
        "warehouse_id": s.warehouse_id,
        "ship_method_id": s.ship_method_id,
        "ship_to_source": sa.case(
            (frozen, s.old_ship_to_source),
            (own, SHIP_TO_ORDER),
            (has_site, SHIP_TO_SITE),
            else_=SHIP_TO_NONE,
        ),
        **{f"ship_to_{c}": ship_to(c) for c in SHIP_TO_COLUMNS},
        "tracking_number": sa.case(
            (is_shipped, sa.func.coalesce(s.tracking_number, s.old_tracking_number)),
            else_=s.tracking_number,
        ),
        "shipped_at": sa.case(
            (is_shipped, sa.func.coalesce(s.shipped_date, s.old_shipped_at)),
            else_=s.shipped_date,
        ),
        "created_version": sa.func.coalesce(s.old_created_version, s.source_version),
        "source_version": s.source_version,
    }
    assert set(values) == {c.name for c in SHIPMENTS.columns}
    derived = sa.select(*(v.label(k) for k, v in values.items())).where(s.status.is_not(None))
    insert = _dialect_insert(dialect)(SHIPMENTS).from_select(list(values), derived)
    t = SHIPMENTS.c
    return insert.on_conflict_do_update(
        index_elements=[t.order_id],
        set_={k: insert.excluded[k] for k in values if k != "order_id"},
        where=t.source_version < insert.excluded.source_version,
    ).returning(t.order_id, t.created_version, t.source_version)


def _dialect_insert(dialect: str) -> Callable[[sa.Table], Any]:
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    msg = f"unsupported target dialect {dialect}"
    raise NotImplementedError(msg)


def _drop_shipments(
    connection: sa.Connection, order_ids: Iterable[int], report: ApplyReport
) -> None:
    """Remove the shipments of these orders where their order_headers row is gone."""
    s, h = SHIPMENTS.c, ORDER_HEADERS.c
    gone = ~sa.exists(sa.select(h.order_id).where(h.order_id == s.order_id))
    statement = sa.delete(SHIPMENTS).where(_among(s.order_id, connection.dialect.name), gone)
    for chunk in _chunks(connection, order_ids):
        result = connection.execute(statement, {"keys": chunk})
        if result.rowcount:
            report.applied["shipments.d"] += result.rowcount


def _refresh_site_ship_to(
    connection: sa.Connection,
    customers: Iterable[int],
    deleted: bool,
    report: ApplyReport,
) -> None:
    """Give the open, site-addressed shipments of ``customers`` their site's address.

    Also fills shipments frozen before the site was known (``ship_to_source`` none).
    With ``deleted``, open shipments whose site is gone lose the address (none).
    """
    s, st = SHIPMENTS.c, SHIP_TO_SITES.c
    follows = sa.or_(s.status.in_(OPEN_STATUSES), s.ship_to_source == SHIP_TO_NONE)
    differs = sa.or_(
        s.ship_to_source != SHIP_TO_SITE,
        *(s[t].is_distinct_from(st[c]) for t, c in zip(_SHIP_TO, SHIP_TO_COLUMNS, strict=True)),
    )
    from_site = {t: st[c] for t, c in zip(_SHIP_TO, SHIP_TO_COLUMNS, strict=True)}
    no_site = ~sa.exists(sa.select(st.customer_id).where(st.customer_id == s.customer_id))
    mine = _among(s.customer_id, connection.dialect.name)
    to_site = (
        sa.update(SHIPMENTS)
        .where(s.customer_id == st.customer_id, mine, s.ship_to_source != SHIP_TO_ORDER)
        .where(follows, differs)
        .values(ship_to_source=SHIP_TO_SITE, **from_site)
    )
    to_none = (
        sa.update(SHIPMENTS)
        .where(mine, s.ship_to_source == SHIP_TO_SITE, s.status.in_(OPEN_STATUSES))
        .where(no_site)
        .values(ship_to_source=SHIP_TO_NONE, **dict.fromkeys(_SHIP_TO))
    )
    for chunk in _chunks(connection, customers):
        updated = connection.execute(to_site, {"keys": chunk}).rowcount or 0
        if deleted:
            updated += connection.execute(to_none, {"keys": chunk}).rowcount or 0
        if updated:
            report.applied["shipments.u"] += updated


# -- the target -----------------------------------------------------------------------------
class ShippingTarget(Target):
    """Shipments and their lines from CustomerSites, Orders and OrderDetails."""

    name: ClassVar[str] = "shipping"
    tables: ClassVar[tuple[str, ...]] = ("customer_sites", "orders", "order_details")
    metadata: ClassVar[sa.MetaData] = METADATA

    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        sites = _validate("customer_sites", changes.get("customer_sites", ()), _site_row, report)
        orders = _validate("orders", changes.get("orders", ()), _order_row, report)
        lines = _validate("order_details", changes.get("order_details", ()), _line_row, report)

        written_sites = _write(connection, sites, SHIP_TO_SITES, report)
        for earlier in _earlier_versions(connection, orders):
            changed = _upsert_changes(connection, orders, ORDER_HEADERS, earlier, report)
            _derive_shipments(connection, (r["order_id"] for r in changed), report)
        written_orders = _write(connection, orders, ORDER_HEADERS, report)
        _write(connection, lines, ORDER_LINES, report)

        if written_orders.deleted:
            _drop_shipments(connection, (k for (k,) in written_orders.deleted), report)
        if written_orders.changed:
            _derive_shipments(connection, (r["order_id"] for r in written_orders.changed), report)
        customers = {r["customer_id"] for r in written_sites.changed}
        customers.update(k for (k,) in written_sites.deleted)
        if customers:
            _refresh_site_ship_to(connection, customers, bool(written_sites.deleted), report)

    # -- reconciliation -----------------------------------------------------------------
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """The mirrors, shipments and shipment lines as the source says they should be.

        Computed in Python from the source tables; canceled shipments and the frozen
        site ship-to of shipped and canceled shipments are left out (module docstring).
        """

        def version(moment: datetime) -> int:
            micros: int = version_of(to_aware(moment, zone))
            return micros

        def instant(moment: datetime | None) -> str | None:
            return None if moment is None else _iso(to_aware(moment, zone))

        images = _images()
        site_address: dict[int, tuple[Any, ...]] = {}
        for r in source.execute(sa.select(source_table("customer_sites"))):
            address = _source_address(r)
            site_address[r.CustomerID] = address
            images["ship_to_sites"].add(
                (r.CustomerID,),
                {
                    **dict(zip(SHIP_TO_COLUMNS, address, strict=True)),
                    "source_version": version(r.ModifiedDate),
                },
            )

        shipping: set[int] = set()
        for r in source.execute(sa.select(source_table("orders"))):
            address = _source_address(r)
            moment = version(r.ModifiedDate)
            images["order_headers"].add(
                (r.OrderID,),
                {
                    "customer_id": r.CustomerID,
                    "status_id": r.OrderStatusID,
                    "warehouse_id": r.WarehouseID,
                    "ship_method_id": r.ShipMethodID,
                    **dict(zip(_ORDER_SHIP, address, strict=True)),
                    "tracking_number": r.TrackingNumber1,
                    "shipped_date": instant(r.ShippedDate),
                    "source_version": moment,
                },
            )
            canceled_after_shipping = r.OrderStatusID == CANCELED and r.ShippedDate is not None
            if r.OrderStatusID not in _SHIPPABLE and not canceled_after_shipping:
                continue
            status = STATUS_SHIPPED if canceled_after_shipping else _SHIPPABLE[r.OrderStatusID]
            if r.Address1 is not None:
                ship_to: tuple[Any, ...] | None = address
            elif status in OPEN_STATUSES:
                ship_to = site_address.get(r.CustomerID, (None,) * len(SHIP_TO_COLUMNS))
            else:
                ship_to = None  # frozen when it shipped: not recomputable
            shipping.add(r.OrderID)
            images["shipments"].add(
                (r.OrderID,),
                {
                    "customer_id": r.CustomerID,
                    "status": status,
                    "cancel_requested": canceled_after_shipping,
                    "warehouse_id": r.WarehouseID,
                    "ship_method_id": r.ShipMethodID,
                    "tracking_number": r.TrackingNumber1,
                    "shipped_at": instant(r.ShippedDate),
                    "ship_to": ship_to,
                    "source_version": moment,
                },
            )

        for r in source.execute(sa.select(source_table("order_details"))):
            values = {
                "item_code": r.ItemCode,
                "description": r.ItemDescription,
                "quantity": Decimal(r.Quantity),
                "weight_each": None if r.WeightEach is None else Decimal(r.WeightEach),
                "source_version": version(r.ModifiedDate),
            }
            images["order_lines"].add((r.OrderID, r.OrderLine), values)
            if r.OrderID in shipping:
                images["shipment_lines"].add((r.OrderID, r.OrderLine), values)
        return images

    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """The same images as :meth:`expected`, read from the target."""
        images = _images()
        for table in (SHIP_TO_SITES, ORDER_HEADERS, ORDER_LINES):
            image = images[table.name]
            key = [c.name for c in table.primary_key.columns]
            for r in target.execute(sa.select(table)):
                values = {
                    k: _iso(v) if isinstance(v, datetime) else v for k, v in r._mapping.items()
                }
                image.add(tuple(values[k] for k in key), values)

        s = SHIPMENTS.c
        for r in target.execute(sa.select(SHIPMENTS).where(s.status != STATUS_CANCELED)):
            compared = r.ship_to_source == SHIP_TO_ORDER or r.status in OPEN_STATUSES
            values = dict(r._mapping)
            values["shipped_at"] = None if r.shipped_at is None else _iso(r.shipped_at)
            values["ship_to"] = tuple(values[c] for c in _SHIP_TO) if compared else None
            images["shipments"].add((r.order_id,), values)

        v = SHIPMENT_LINES.c
        query = sa.select(SHIPMENT_LINES).where(v.shipment_status != STATUS_CANCELED)
        for r in target.execute(query):
            images["shipment_lines"].add((r.order_id, r.line), dict(r._mapping))
        return images


def _source_address(row: Any) -> tuple[Any, ...]:
    """Name, company and address of a source Orders or CustomerSites row."""
    return (
        full_name(row.FirstName, row.LastName),
        row.Company,
        row.Address1,
        row.Address2,
        row.City,
        row.State,
        row.Zip,
        row.Country,
    )


def _iso(moment: datetime) -> str:
    """An instant as ISO text in UTC (SQLite gives back naive UTC, PostgreSQL aware)."""
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _images() -> dict[str, TableImage]:
    lines = ("item_code", "description", "quantity", "weight_each", "source_version")
    return {
        "ship_to_sites": TableImage((*SHIP_TO_COLUMNS, "source_version")),
        "order_headers": TableImage(
            (
                "customer_id",
                "status_id",
                "warehouse_id",
                "ship_method_id",
                *_ORDER_SHIP,
                "tracking_number",
                "shipped_date",
                "source_version",
            )
        ),
        "order_lines": TableImage(lines, money=("quantity", "weight_each")),
        "shipments": TableImage(
            (
                "customer_id",
                "status",
                "cancel_requested",
                "warehouse_id",
                "ship_method_id",
                "tracking_number",
                "shipped_at",
                "ship_to",
                "source_version",
            )
        ),
        "shipment_lines": TableImage(lines, money=("quantity", "weight_each")),
    }
