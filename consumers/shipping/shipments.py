"""Shipments: which orders get one, in what status, shipped to where.

A shipment is derived from three things the shipping target stores: the order (its
``order_headers`` mirror row), the shipment as it stands (if any) and the
customer's site (``ship_to_sites``). This module states the rules, as the column
expressions of the derived shipment (:func:`shipment_status`,
:func:`derived_columns`) and of a site address change (:func:`follows_site`,
:func:`site_ship_to`, :func:`loses_site`); :mod:`consumers.shipping.target` builds the
statements that
apply them to the orders and customers a batch changed.

Rules (Exigo OrderStatusID: 2 Pending, 5 Canceled, 8 Accepted, 9 Printed,
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
- An order deleted in the source cancels its shipment if it has not shipped
  (``canceled``, as a cancellation would); a ``shipped`` one is kept as it is and
  reported (see :mod:`consumers.shipping.target`): nothing about goods already on
  their way is guessed. Its lines go with their own deletes (the shipment's lines
  are a view of the order's).
- ``created_version`` is the order version that created the shipment;
  ``source_version`` the order version it was last derived from (a site address
  change moves the ship-to, not the version).

:func:`source_shipment` says the same of an order as the source holds it now, for
reconciliation, as far as the source's current rows can tell.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from consumers.shipping.schema import (
    OPEN_STATUSES,
    SHIP_TO_COLUMNS,
    SHIP_TO_NONE,
    SHIP_TO_ORDER,
    SHIP_TO_SITE,
    SHIPMENT_SHIP_TO,
    SHIPMENTS,
    STATUS_CANCELED,
    STATUS_PRINTED,
    STATUS_READY,
    STATUS_SHIPPED,
)

__all__ = [
    "ACCEPTED",
    "CANCELED",
    "NO_SHIP_TO",
    "OLD_COLUMNS",
    "PRINTED",
    "SHIPPABLE",
    "SHIPPED",
    "SITE_COLUMNS",
    "derived_columns",
    "follows_site",
    "loses_site",
    "shipment_status",
    "site_ship_to",
    "source_shipment",
]

#: Exigo OrderStatusIDs that matter to shipping.
CANCELED, ACCEPTED, PRINTED, SHIPPED = 5, 8, 9, 10
#: The statuses that give an order a shipment, and the shipment's status for each.
SHIPPABLE = {ACCEPTED: STATUS_READY, PRINTED: STATUS_PRINTED, SHIPPED: STATUS_SHIPPED}
_FINAL = (STATUS_SHIPPED, STATUS_CANCELED)

#: The columns of the stored shipment the rules read, as ``old_<column>``.
OLD_COLUMNS = (
    "order_id",
    "status",
    "ship_to_source",
    *SHIPMENT_SHIP_TO,
    "tracking_number",
    "shipped_at",
    "created_version",
)
#: The columns of the customer's site the rules read, as ``site_<column>``.
SITE_COLUMNS = ("customer_id", *SHIP_TO_COLUMNS)


def shipment_status(order: Any, old: Any) -> sa.ColumnElement[Any]:
    """The status of an order's shipment, or NULL for an order that gets none.

    ``order`` holds the columns of ``order_headers``, ``old`` those of the stored
    shipment (all NULL when there is none).
    """
    shipped = sa.or_(
        old.status == STATUS_SHIPPED,
        order.status_id == SHIPPED,
        sa.and_(order.status_id == CANCELED, order.shipped_date.is_not(None)),
    )
    return sa.case(
        (shipped, STATUS_SHIPPED),
        (order.status_id == ACCEPTED, STATUS_READY),
        (order.status_id == PRINTED, STATUS_PRINTED),
        (old.order_id.is_not(None), STATUS_CANCELED),  # withdrawn: cancels what is open
        else_=sa.null(),
    )


def derived_columns(state: Any) -> dict[str, sa.ColumnElement[Any]]:
    """Every column of the derived shipment, from one row of ``state``.

    ``state`` holds the columns of ``order_headers``, ``status`` (from
    :func:`shipment_status`), the stored shipment's :data:`OLD_COLUMNS` as
    ``old_<column>`` and the site's :data:`SITE_COLUMNS` as ``site_<column>``.
    """
    s = state
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
    return values


def follows_site(shipment: Any, site: Any) -> sa.ColumnElement[bool]:
    """The shipments that take their ``site``'s address now and do not hold it yet.

    Open shipments without an address of their own, and shipments frozen before the
    site was known (``none``).
    """
    s = shipment
    differs = sa.or_(
        s.ship_to_source != SHIP_TO_SITE,
        *(
            s[t].is_distinct_from(site[c])
            for t, c in zip(SHIPMENT_SHIP_TO, SHIP_TO_COLUMNS, strict=True)
        ),
    )
    return sa.and_(
        s.customer_id == site.customer_id,
        s.ship_to_source != SHIP_TO_ORDER,
        sa.or_(s.status.in_(OPEN_STATUSES), s.ship_to_source == SHIP_TO_NONE),
        differs,
    )


def site_ship_to(site: Any) -> dict[str, Any]:
    """The ship-to columns of a shipment that follows ``site``."""
    return {
        "ship_to_source": SHIP_TO_SITE,
        **{t: site[c] for t, c in zip(SHIPMENT_SHIP_TO, SHIP_TO_COLUMNS, strict=True)},
    }


def loses_site(shipment: Any, site: Any) -> sa.ColumnElement[bool]:
    """The open shipments addressed from their customer's site, where ``site`` has none."""
    s = shipment
    gone = ~sa.exists(sa.select(site.customer_id).where(site.customer_id == s.customer_id))
    return sa.and_(s.ship_to_source == SHIP_TO_SITE, s.status.in_(OPEN_STATUSES), gone)


#: The ship-to columns of a shipment that lost its site.
NO_SHIP_TO: dict[str, Any] = {"ship_to_source": SHIP_TO_NONE, **dict.fromkeys(SHIPMENT_SHIP_TO)}


def source_shipment(status_id: int, shipped_date: datetime | None) -> tuple[str, bool] | None:
    """(status, cancel_requested) of the shipment an order must have, from the order alone.

    None where the order has none, or only a ``canceled`` one: whether a cancelled
    order ever had a shipment depends on whether the target saw it shippable, which
    the source does not record.
    """
    canceled_after_shipping = status_id == CANCELED and shipped_date is not None
    if canceled_after_shipping:
        return STATUS_SHIPPED, True
    status = SHIPPABLE.get(status_id)
    return None if status is None else (status, False)
