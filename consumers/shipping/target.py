"""The shipping sample target: shipments (with their lines) of the orders that can ship.

Source table      target table     key
CustomerSites  -> ship_to_sites    customer_id         (mirror)
Orders         -> order_headers    order_id            (mirror, every status)
OrderDetails   -> order_lines      (order_id, line)    (mirror)
(derived)         shipments        order_id
(view)            shipment_lines   (order_id, line)    shipments JOIN order_lines

See :mod:`consumers.shipping.schema` for the columns,
:mod:`consumers.shipping.shipments` for the rules that derive a shipment (applied
set-based by :mod:`consumers.shipping.shipment_sql`), and
:mod:`consumers.shipping.reconcile` for what ``queuestream verify`` compares.

How a batch is applied (:meth:`ShippingTarget.apply`), inside the runtime's
transaction:

1. Every change is validated in Python before any SQL: text fits its column (and
   holds no NUL or non-UTF-8 character), the OrderStatusID is one Exigo knows, ids
   are integers, quantities and weights fit their NUMERIC, timestamps are aware. A
   failing record goes to ``report.reject`` with a RecordError naming table, key and
   column and is skipped; the rest of the batch is applied.
2. The mirrors, in foreign-key order (customer_sites, orders, order_details): one
   change per key survives (:func:`~consumers.target_rows.latest_per_key`), upserts
   go out together (an equal or older version changes nothing, as in
   :func:`~consumers.target_sql.upsert_versioned`) and deletes through
   :func:`~consumers.target_sql.delete_versioned`. An order with several versions
   in the batch, one of them shippable, has its earlier versions applied first, one
   round each (:func:`_earlier_versions`), each deriving the shipment.
3. The shipments of the orders whose mirror row changed are derived by one
   ``INSERT ... SELECT ... ON CONFLICT`` per chunk of orders, from what is stored
   now: the order, its shipment, its customer's site. Within a batch the mirrors,
   order_lines included, are written before any shipment is derived.
4. One UPDATE moves the ship-to of the open shipments of the customers whose site
   changed (and that have no address of their own) to the new address.
5. Deletes (op 'd', where the stored version is not newer than the delete's): a
   line deleted in the source leaves its order's mirror, and so the shipment (its
   lines are a view of the order's). An order deleted in the source leaves
   ``order_headers``; its shipment, if it has not shipped, is canceled (kept, as a
   cancellation would); a shipped one is kept as it is, and reported: a warning
   naming the orders and the notice ``shipments.shipped_order_deleted`` in the sync
   log and in metrics (goods are on their way for an order that is gone: a human
   decides). A site deleted in the source leaves the open shipments that used it
   without a ship-to (rule of :mod:`consumers.shipping.shipments`).

Counting: ``report.applied["<target table>.<op>"]`` counts rows the batch changed
(inserted, updated or deleted), by the op of the event that changed them; derived
shipments count as ``shipments.c`` (new) and ``shipments.u`` (changed, also by a site
address, or canceled with their deleted order). ``report.stale["<source
table>"]`` counts valid events that changed nothing: redelivered, older than the
stored row, or superseded by a newer event of the same key in the batch.

There are no database foreign keys between the tables: the instances of a consumer
group write different customers concurrently, and a row may arrive before the row it
refers to.

Sets of orders and customers reach SQL through :func:`~queuestream.key_sets.among`
in chunks (:func:`~queuestream.key_sets.key_chunks`): on PostgreSQL one array, not
thousands of parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.changes import Change
from consumers.reconcile import TableImage
from consumers.shipping import reconcile
from consumers.shipping.schema import (
    METADATA,
    ORDER_HEADERS,
    ORDER_LINES,
    SHIP_TO_SITES,
    full_name,
)
from consumers.shipping.shipment_sql import (
    derive_shipments,
    refresh_site_ship_to,
    withdraw_shipments,
)
from consumers.shipping.shipments import SHIPPABLE
from consumers.target import ApplyReport, Target
from consumers.target_rows import (
    DecimalRule,
    Row,
    ValidRows,
    check_decimal,
    check_instant,
    check_length,
    check_required,
    record_error,
    text_limit,
    validate,
)
from consumers.target_write import upsert_rows, write_rows
from queuestream.key_sets import KEYS, among, key_chunks
from queuestream.source_values import ORDER_STATUS

__all__ = ["ShippingTarget"]

log = logging.getLogger(__name__)

_TARGET = "shipping"  # names this target in "NULL in a column the ... target requires"


# -- validation and mapping (pure Python, per record) -----------------------------------
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
    half = text_limit(table.c[f"{prefix}name"]) // 2  # "First Last" fits
    return (
        ("_first", "FirstName", half),
        ("_last", "LastName", half),
        *(
            (f"{prefix}{c}", source, text_limit(table.c[f"{prefix}{c}"]))
            for c, source in _ADDRESS_SOURCES.items()
        ),
    )


def _named(integers: _Integers, texts: _Texts, name: str, *rest: str) -> tuple[str, ...]:
    """The target columns of a row of :func:`_columns` with the name parts joined as ``name``."""
    return (*(t for t, _ in integers), name, *(t for t, _, _ in texts[2:]), *rest)


def _reads(integers: _Integers, texts: _Texts, *rest: str) -> tuple[str, ...]:
    """The source columns a mapping of :func:`_columns` and ``rest`` reads (Target.reads)."""
    return (*(s for _, s in integers), *(s for _, s, _ in texts), *rest)


def _columns(change: Change, integers: _Integers, texts: _Texts) -> list[Any]:
    """Required integers, then texts that fit, in order; else a RecordError.

    Table-driven and inline, as this runs for every event: ``check_length`` only
    builds the error of a text that does not fit. Text the database cannot store
    (a NUL character, or a lone surrogate from bytes that were not UTF-8) is refused
    here too, so that it names its record instead of failing the whole batch.
    """
    row = change.row
    assert row is not None
    found: list[Any] = []
    append = found.append
    for _, source in integers:
        value = row.get(source)
        if type(value) is not int:
            raise record_error(change, source, f"{value!r} is not an integer (required)")
        append(value)
    for _, source, limit in texts:
        value = row.get(source)
        if value is not None:
            if len(value) > limit:
                check_length(change, source, limit)  # raises, naming the column
            if "\x00" in value or not (value.isascii() or _utf8(value)):
                raise record_error(change, source, "text with a NUL character or not UTF-8")
        append(value)
    return found


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _joined(values: list[Any], integers: int) -> list[Any]:
    """``values`` of :func:`_columns` with the name parts after ``integers`` joined."""
    first, last = values[integers], values[integers + 1]
    values[integers : integers + 2] = [full_name(first, last)]
    return values


_SITE_INTEGERS: _Integers = (("customer_id", "CustomerID"),)
_SITE_TEXTS = _address_texts(SHIP_TO_SITES, "")
_SITE_COLUMNS = _named(_SITE_INTEGERS, _SITE_TEXTS, "name", "source_version")


def _site_row(change: Change) -> Row:
    found = _joined(_columns(change, _SITE_INTEGERS, _SITE_TEXTS), len(_SITE_INTEGERS))
    found.append(change.version)
    return tuple(found)


_ORDER_INTEGERS: _Integers = (
    ("order_id", "OrderID"),
    ("customer_id", "CustomerID"),
    ("status_id", "OrderStatusID"),
    ("warehouse_id", "WarehouseID"),
    ("ship_method_id", "ShipMethodID"),
)
_ORDER_TEXTS = (
    *_address_texts(ORDER_HEADERS, "ship_"),
    ("tracking_number", "TrackingNumber1", text_limit(ORDER_HEADERS.c.tracking_number)),
)
_ORDER_COLUMNS = _named(
    _ORDER_INTEGERS, _ORDER_TEXTS, "ship_name", "shipped_date", "source_version"
)
_ORDER_ID, _STATUS_ID = _ORDER_COLUMNS.index("order_id"), _ORDER_COLUMNS.index("status_id")


def _order_row(change: Change) -> Row:
    found = _columns(change, _ORDER_INTEGERS, _ORDER_TEXTS)
    status_id = found[_STATUS_ID]
    if status_id not in ORDER_STATUS:
        known = ", ".join(f"{k} {v}" for k, v in ORDER_STATUS.items())
        reason = f"unknown order status {status_id} (known: {known})"
        raise record_error(change, "OrderStatusID", reason)
    _joined(found, len(_ORDER_INTEGERS))
    found.append(check_instant(change, "ShippedDate"))
    found.append(change.version)
    return tuple(found)


_LINE_INTEGERS: _Integers = (("order_id", "OrderID"), ("line", "OrderLine"))
_QUANTITY = DecimalRule.of(ORDER_LINES.c.quantity)
_WEIGHT = DecimalRule.of(ORDER_LINES.c.weight_each)
_LINE_TEXTS: _Texts = (
    ("item_code", "ItemCode", text_limit(ORDER_LINES.c.item_code)),
    ("description", "ItemDescription", text_limit(ORDER_LINES.c.description)),
)
_LINE_COLUMNS = (
    *(t for t, _ in _LINE_INTEGERS),
    *(t for t, _, _ in _LINE_TEXTS),
    "quantity",
    "weight_each",
    "source_version",
)


def _line_row(change: Change) -> Row:
    found = _columns(change, _LINE_INTEGERS, _LINE_TEXTS)
    if found[2] is None:  # item_code
        check_required(change, "ItemCode", _TARGET)
    found.append(check_decimal(change, "Quantity", _QUANTITY, required_by=_TARGET))
    found.append(check_decimal(change, "WeightEach", _WEIGHT))
    found.append(change.version)
    return tuple(found)


# -- orders with several versions in a batch -----------------------------------------
def _earlier_versions(connection: sa.Connection, found: ValidRows) -> list[list[Change]]:
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
        if change.op != "d":
            versions.setdefault(change.key["OrderID"], []).append(change)
    several = {
        k: changes
        for k, changes in versions.items()
        if len(changes) > 1 and any(found.row(c)[_STATUS_ID] in SHIPPABLE for c in changes)
    }
    if not several:
        return []
    stored: dict[int, int] = {}
    h = ORDER_HEADERS.c
    query = sa.select(h.order_id, h.source_version).where(
        among(h.order_id, connection.dialect.name)
    )
    for chunk in key_chunks(connection, several):
        stored.update((k, v) for k, v in connection.execute(query, {KEYS: chunk}))
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


# -- the target -----------------------------------------------------------------------------
class ShippingTarget(Target):
    """Shipments and their lines from CustomerSites, Orders and OrderDetails."""

    name: ClassVar[str] = "shipping"
    tables: ClassVar[tuple[str, ...]] = ("customer_sites", "orders", "order_details")
    metadata: ClassVar[sa.MetaData] = METADATA
    reads: ClassVar[Mapping[str, tuple[str, ...]] | None] = {
        "customer_sites": _reads(_SITE_INTEGERS, _SITE_TEXTS),
        "orders": _reads(_ORDER_INTEGERS, _ORDER_TEXTS, "ShippedDate"),
        "order_details": _reads(_LINE_INTEGERS, _LINE_TEXTS, "Quantity", "WeightEach"),
    }

    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        sites = validate(
            "customer_sites", changes.get("customer_sites", ()), _site_row, report, _SITE_COLUMNS
        )
        orders = validate("orders", changes.get("orders", ()), _order_row, report, _ORDER_COLUMNS)
        lines = validate(
            "order_details", changes.get("order_details", ()), _line_row, report, _LINE_COLUMNS
        )

        written_sites = write_rows(connection, sites, SHIP_TO_SITES, report, log)
        for earlier in _earlier_versions(connection, orders):
            changed = upsert_rows(connection, orders, ORDER_HEADERS, earlier, report)
            derive_shipments(connection, (r[_ORDER_ID] for r in changed), report)
        written_orders = write_rows(connection, orders, ORDER_HEADERS, report, log)
        write_rows(connection, lines, ORDER_LINES, report, log)

        if written_orders.removed:
            withdraw_shipments(connection, (k for (k,) in written_orders.removed), report)
        if written_orders.changed:
            repaired = frozenset(w.key["OrderID"] for w in orders.winners if w.op == "r")
            derived = written_orders.values("order_id")
            derive_shipments(connection, derived, report, repaired)
        customers = set(written_sites.values("customer_id"))
        customers.update(k for (k,) in written_sites.deleted)
        if customers:
            refresh_site_ship_to(connection, customers, bool(written_sites.deleted), report)

    # -- reconciliation (queuestream verify) -------------------------------------------
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """The mirrors, shipments and shipment lines as the source says (:mod:`.reconcile`)."""
        return reconcile.expected_images(source, zone)

    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """The same images, read from the target (:mod:`.reconcile`)."""
        return reconcile.actual_images(target)
