"""What the shipping target should hold, from the source, and what it holds.

``queuestream verify shipping`` compares the two (:mod:`consumers.verify`,
:func:`consumers.reconcile.compare`): the three mirrors in full, and
``shipments`` / ``shipment_lines`` for the orders the source says must have one
(:func:`consumers.shipping.shipments.source_shipment`): status 8, 9 or 10, or
Canceled with a ShippedDate (shipped, cancel requested): customer, status,
cancel_requested, warehouse, ship method, tracking number, shipped date, version,
and the lines' items and quantities. What cannot be recomputed from the source's
current rows is left out on both sides:

- ``canceled`` shipments: whether a cancelled order ever had a shipment depends on
  whether the target saw it shippable, which the source does not record (a
  cancelled order whose shipment is not canceled still shows, as an unexpected row);
- the ship-to of a shipped or canceled shipment that came from the customer's site:
  it was frozen then, and the site may have changed since. The ship-to is compared
  for open shipments and for shipments addressed with the order's own address;
- shipments whose order was deleted in the source (no ``order_headers`` row): the
  target keeps a shipped one as it is (and reported it when the delete came), and
  the source holds nothing to compare it with. Their lines go with their own
  deletes.

Not recomputable either, and so reported by verify should the source do it (the
simulator never does): an order's own address edited after it shipped (the shipment
keeps the old one), and an order moved back from Shipped (its shipment stays
shipped).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.reconcile import TableImage, source_instant, source_table, source_version
from consumers.shipping.schema import (
    OPEN_STATUSES,
    ORDER_HEADERS,
    ORDER_LINES,
    ORDER_SHIP_TO,
    SHIP_TO_COLUMNS,
    SHIP_TO_ORDER,
    SHIP_TO_SITES,
    SHIPMENT_LINES,
    SHIPMENT_SHIP_TO,
    SHIPMENTS,
    STATUS_CANCELED,
    full_name,
)
from consumers.shipping.shipments import source_shipment

__all__ = ["actual_images", "expected_images"]


def expected_images(source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
    """The mirrors, shipments and shipment lines as the source says they should be.

    Computed in Python from the source tables; canceled shipments and the frozen
    site ship-to of shipped and canceled shipments are left out (module docstring).
    """

    def version(moment: datetime) -> int:
        return source_version(moment, zone)

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
                **dict(zip(ORDER_SHIP_TO, address, strict=True)),
                "tracking_number": r.TrackingNumber1,
                "shipped_date": source_instant(r.ShippedDate, zone),
                "source_version": moment,
            },
        )
        shipment = source_shipment(r.OrderStatusID, r.ShippedDate)
        if shipment is None:
            continue
        status, cancel_requested = shipment
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
                "cancel_requested": cancel_requested,
                "warehouse_id": r.WarehouseID,
                "ship_method_id": r.ShipMethodID,
                "tracking_number": r.TrackingNumber1,
                "shipped_at": source_instant(r.ShippedDate, zone),
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


def actual_images(target: sa.Connection) -> dict[str, TableImage]:
    """The same images as :func:`expected_images`, read from the target."""
    images = _images()
    for table in (SHIP_TO_SITES, ORDER_HEADERS, ORDER_LINES):
        images[table.name].read(target, table)

    s, h = SHIPMENTS.c, ORDER_HEADERS.c
    ordered = sa.exists(sa.select(h.order_id).where(h.order_id == s.order_id))
    query = sa.select(SHIPMENTS).where(s.status != STATUS_CANCELED, ordered)
    for r in target.execute(query):
        compared = r.ship_to_source == SHIP_TO_ORDER or r.status in OPEN_STATUSES
        values = dict(r._mapping)
        values["ship_to"] = tuple(values[c] for c in SHIPMENT_SHIP_TO) if compared else None
        images["shipments"].add((r.order_id,), values)

    v = SHIPMENT_LINES.c
    ordered = sa.exists(sa.select(h.order_id).where(h.order_id == v.order_id))
    query = sa.select(SHIPMENT_LINES).where(v.shipment_status != STATUS_CANCELED, ordered)
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
                *ORDER_SHIP_TO,
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
