"""The shipping target's tables (SQLAlchemy Core) and its one view.

::

    ship_to_sites    one per customer          <- CustomerSites (mirror)
    order_headers    one per order             <- Orders (mirror, every status)
    order_lines      one per order line        <- OrderDetails (mirror)
    shipments        one per shippable order   <- order_headers + ship_to_sites (derived)
    shipment_lines   VIEW: shipments JOIN order_lines

The three mirrors keep only the source columns shipping needs. Every mirror row
carries ``source_version``: the source row's ModifiedDate in microseconds since the
epoch (UTC). Writes only replace a row with a newer version, so a redelivered or
older event changes nothing.

``shipments`` is derived by the target at the end of each batch for the orders the
batch changed (see :mod:`consumers.shipping.shipments` for the rules);
``shipments.source_version`` is the version of the order it was derived from.

``shipment_lines`` is a VIEW, not a table: the lines of a shipment are its order's
lines, always. A shipment can therefore never be shown without the lines its order
has, the view costs nothing to maintain, and a line edited in the source is seen at
once (a shipped order's lines are not edited in practice). ``METADATA.create_all``
creates the view after the tables and ``drop_all`` drops it first (listeners on
METADATA; see :func:`create_view`); :data:`SHIPMENT_LINES` is a table object to read
it with.

Money-like amounts (quantities, weights) are exact:
:class:`~consumers.target_sql.Money` is NUMERIC on PostgreSQL and integer
units of the scale on SQLite. Instants are stored in UTC.

There are no foreign keys between these tables on purpose: the instances of a
consumer group write different customers concurrently, and a mirror row may arrive
before the row it refers to (an order before its customer's site, for example).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from consumers.target_sql import Money, version_column

__all__ = [
    "METADATA",
    "OPEN_STATUSES",
    "ORDER_HEADERS",
    "ORDER_LINES",
    "ORDER_SHIP_TO",
    "SHIPMENTS",
    "SHIPMENT_LINES",
    "SHIPMENT_SHIP_TO",
    "SHIP_TO_COLUMNS",
    "SHIP_TO_NONE",
    "SHIP_TO_ORDER",
    "SHIP_TO_SITE",
    "SHIP_TO_SITES",
    "STATUS_CANCELED",
    "STATUS_PRINTED",
    "STATUS_READY",
    "STATUS_SHIPPED",
    "create_view",
    "full_name",
]

METADATA = sa.MetaData()

#: Shipment status of an Accepted order (OrderStatusID 8): to be picked.
STATUS_READY = "ready"
#: Shipment status of a Printed order (9): the packing slip is printed.
STATUS_PRINTED = "printed"
#: Shipment status of a Shipped order (10); final: a shipment is never un-shipped.
STATUS_SHIPPED = "shipped"
#: Shipment status of an order cancelled (or withdrawn) before it shipped.
STATUS_CANCELED = "canceled"
#: Open shipments: their ship-to still follows the order or the customer's site.
OPEN_STATUSES = (STATUS_READY, STATUS_PRINTED)

#: ``shipments.ship_to_source``: the order's own address (Orders.Address1 not NULL).
SHIP_TO_ORDER = "order"
#: ``shipments.ship_to_source``: the customer's site address (the order has none).
SHIP_TO_SITE = "site"
#: ``shipments.ship_to_source``: neither is known yet (the site has not arrived).
SHIP_TO_NONE = "none"

#: The ship-to columns, the same in order_headers, ship_to_sites and shipments (prefixed).
SHIP_TO_COLUMNS = ("name", "company", "address1", "address2", "city", "state", "zip", "country")
#: The ship-to columns of order_headers (``ship_``) and of shipments (``ship_to_``).
ORDER_SHIP_TO = tuple(f"ship_{c}" for c in SHIP_TO_COLUMNS)
SHIPMENT_SHIP_TO = tuple(f"ship_to_{c}" for c in SHIP_TO_COLUMNS)

_NAME_LENGTH = 101  # "FirstName LastName", 50 characters each


def full_name(first: str | None, last: str | None) -> str | None:
    """'First Last' from the parts that are not empty, or None."""
    name = " ".join(p for p in (first, last) if p)
    return name or None


def _address(prefix: str, where: str) -> list[sa.Column[Any]]:
    return [
        sa.Column(
            f"{prefix}name", sa.String(_NAME_LENGTH), comment=f"{where} 'FirstName LastName'"
        ),
        sa.Column(f"{prefix}company", sa.String(100), comment=f"{where} Company"),
        sa.Column(f"{prefix}address1", sa.String(100), comment=f"{where} Address1"),
        sa.Column(f"{prefix}address2", sa.String(100), comment=f"{where} Address2"),
        sa.Column(f"{prefix}city", sa.String(50), comment=f"{where} City"),
        sa.Column(f"{prefix}state", sa.String(10), comment=f"{where} State"),
        sa.Column(f"{prefix}zip", sa.String(20), comment=f"{where} Zip"),
        sa.Column(f"{prefix}country", sa.String(10), comment=f"{where} Country"),
    ]


SHIP_TO_SITES = sa.Table(
    "ship_to_sites",
    METADATA,
    sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
    *_address("", "CustomerSites."),
    version_column(),
    comment="The customer's site address: the ship-to of orders without their own (mirror).",
)

ORDER_HEADERS = sa.Table(
    "order_headers",
    METADATA,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False, comment="Orders.CustomerID"),
    sa.Column(
        "status_id",
        sa.Integer,
        nullable=False,
        comment="Orders.OrderStatusID (2 Pending, 5 Canceled, 8 Accepted, 9 Printed, 10 Shipped)",
    ),
    sa.Column("warehouse_id", sa.Integer, nullable=False, comment="Orders.WarehouseID"),
    sa.Column("ship_method_id", sa.Integer, nullable=False, comment="Orders.ShipMethodID"),
    *_address("ship_", "Orders."),
    sa.Column("tracking_number", sa.String(50), comment="Orders.TrackingNumber1"),
    sa.Column("shipped_date", sa.DateTime(timezone=True), comment="Orders.ShippedDate, UTC"),
    version_column(),
    comment="Every order, whatever its status, with its own ship-to if it has one (mirror).",
)

ORDER_LINES = sa.Table(
    "order_lines",
    METADATA,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("item_code", sa.String(50), nullable=False, comment="OrderDetails.ItemCode"),
    sa.Column("description", sa.String(200), comment="OrderDetails.ItemDescription"),
    sa.Column("quantity", Money(12, 4), nullable=False, comment="OrderDetails.Quantity"),
    sa.Column("weight_each", Money(16, 4), comment="OrderDetails.WeightEach"),
    version_column(),
    comment="Order lines, stored when the order is created, long before it ships (mirror).",
)

SHIPMENTS = sa.Table(
    "shipments",
    METADATA,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False, index=True, comment="Orders.CustomerID"),
    sa.Column(
        "status",
        sa.String(10),
        nullable=False,
        comment="ready (order Accepted 8), printed (9), shipped (10, final), canceled",
    ),
    sa.Column(
        "cancel_requested",
        sa.Boolean,
        nullable=False,
        comment="the order is Canceled (5) although the shipment has shipped",
    ),
    sa.Column("warehouse_id", sa.Integer, nullable=False, comment="Orders.WarehouseID"),
    sa.Column("ship_method_id", sa.Integer, nullable=False, comment="Orders.ShipMethodID"),
    sa.Column(
        "ship_to_source",
        sa.String(5),
        nullable=False,
        comment="where ship_to_* came from: order, site, or none (the site is not known yet)",
    ),
    *_address("ship_to_", "ship-to:"),
    sa.Column("tracking_number", sa.String(50), comment="Orders.TrackingNumber1"),
    sa.Column("shipped_at", sa.DateTime(timezone=True), comment="Orders.ShippedDate, UTC"),
    sa.Column(
        "created_version",
        sa.BigInteger,
        nullable=False,
        comment="the version of the order that created the shipment (first seen shippable)",
    ),
    sa.Column(
        "source_version",
        sa.BigInteger,
        nullable=False,
        comment="the version of the order this shipment was derived from",
    ),
    comment="One shipment per order that reached Accepted (8), Printed (9) or Shipped (10).",
)

#: The ``shipment_lines`` view, as a table object to read it with (not in METADATA).
SHIPMENT_LINES = sa.Table(
    "shipment_lines",
    sa.MetaData(),
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("shipment_status", sa.String(10)),
    sa.Column("item_code", sa.String(50)),
    sa.Column("description", sa.String(200)),
    sa.Column("quantity", Money(12, 4)),
    sa.Column("weight_each", Money(16, 4)),
    sa.Column("source_version", sa.BigInteger),
)


def _view_query() -> sa.Select[Any]:
    s, line = SHIPMENTS.c, ORDER_LINES.c
    return sa.select(
        s.order_id,
        line.line,
        s.status.label("shipment_status"),
        line.item_code,
        line.description,
        line.quantity,
        line.weight_each,
        line.source_version,
    ).join_from(SHIPMENTS, ORDER_LINES, line.order_id == s.order_id)


def create_view(connection: sa.Connection) -> None:
    """Create the ``shipment_lines`` view where missing (idempotent)."""
    body = _view_query().compile(dialect=connection.dialect)
    if connection.dialect.name == "postgresql":
        ddl = f"CREATE OR REPLACE VIEW shipment_lines AS {body}"
    else:
        ddl = f"CREATE VIEW IF NOT EXISTS shipment_lines AS {body}"
    connection.exec_driver_sql(ddl)


@sa.event.listens_for(METADATA, "after_create")
def _after_create(_metadata: sa.MetaData, connection: sa.Connection, **_kw: Any) -> None:
    create_view(connection)


@sa.event.listens_for(METADATA, "before_drop")
def _before_drop(_metadata: sa.MetaData, connection: sa.Connection, **_kw: Any) -> None:
    connection.exec_driver_sql("DROP VIEW IF EXISTS shipment_lines")
