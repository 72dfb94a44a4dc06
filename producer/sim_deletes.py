"""The simulated business's deletes: what an order system removes, and how.

Four actions, weighted low next to the ordinary ones (:data:`DELETE_ACTIONS`):

* ``remove_line``: a line removed from an open order of two lines or more; the
  order's totals are recomputed and its ModifiedDate touched, as an ERP edit does
  (a refresh then deletes the line with the order, :mod:`producer.refresh`);
* ``delete_payment``: a recent payment of an open order, entered by mistake;
* ``delete_order``: an unshipped order that nobody paid, cancelled and deleted
  with its lines;
* ``delete_customer``: a customer with no orders, no payments and no enrollees,
  deleted with their site and account rows.

Only the first touches a row that stays: the other three leave nothing changed
behind, so only a sweep (:mod:`producer.sweep`) publishes them. That is why the
simulator deletes only when asked (``Simulator(deletes=True)``, ``queuestream sim
--deletes``): a pipeline that never sweeps, procedure mode among them, would not
converge on them.

Candidates are read from the database in key order and drawn with the business's
generator, so the same seed on the same starting database deletes the same rows.
An action without a candidate gives way to an ordinary one (:func:`feasible_delete`).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from producer.sim_actions import SimulatedBusiness

__all__ = ["DELETE_ACTIONS", "delete_actions", "feasible_delete"]

#: Delete actions and their relative weights (the ordinary actions weigh 100 in all).
DELETE_ACTIONS: dict[str, int] = {
    "remove_line": 3,
    "delete_payment": 1,
    "delete_order": 1,
    "delete_customer": 1,
}
#: What a delete action gives way to when nothing can be deleted.
_INSTEAD = {
    "remove_line": "new_order",
    "delete_payment": "payment",
    "delete_order": "new_order",
    "delete_customer": "new_customer",
}
#: A payment "entered by mistake" is one of the most recent few.
_RECENT_PAYMENTS = 10
_OPEN_STATUSES = (2, 8, 9)  # pending, accepted, printed: not shipped, not canceled
_CENTS = Decimal("0.01")


def _candidates(business: SimulatedBusiness, conn: sa.Connection, action: str) -> list[Any]:
    """What ``action`` may delete now, in key order (rows or ids)."""
    t = business.t
    orders, details, payments = t["Orders"], t["OrderDetails"], t["Payments"]
    customers = t["Customers"]
    is_open = orders.c.OrderStatusID.in_(_OPEN_STATUSES)
    if action == "remove_line":
        query = (
            sa.select(details.c.OrderID)
            .join(orders, orders.c.OrderID == details.c.OrderID)
            .where(is_open)
            .group_by(details.c.OrderID)
            .having(sa.func.count() >= 2)
            .order_by(details.c.OrderID)
        )
    elif action == "delete_payment":
        query = (
            sa.select(payments.c.PaymentID, payments.c.OrderID, payments.c.Amount)
            .join(orders, orders.c.OrderID == payments.c.OrderID)
            .where(is_open)
            .order_by(payments.c.PaymentID.desc())
            .limit(_RECENT_PAYMENTS)
        )
    elif action == "delete_order":
        query = (
            sa.select(orders.c.OrderID)
            .where(is_open, ~orders.c.OrderID.in_(sa.select(payments.c.OrderID)))
            .order_by(orders.c.OrderID)
        )
    else:
        enrollers = sa.select(customers.c.EnrollerID).where(customers.c.EnrollerID.is_not(None))
        query = (
            sa.select(customers.c.CustomerID)
            .where(
                ~customers.c.CustomerID.in_(sa.select(orders.c.CustomerID)),
                ~customers.c.CustomerID.in_(sa.select(payments.c.CustomerID)),
                ~customers.c.CustomerID.in_(enrollers),
            )
            .order_by(customers.c.CustomerID)
        )
    # the order's id (a payment's is second), else the customer's: this simulator's share
    key = 1 if action == "delete_payment" else 0
    return [tuple(row) for row in conn.execute(query) if business.owns(row[key])]


def feasible_delete(business: SimulatedBusiness, conn: sa.Connection | None, action: str) -> str:
    """``action``, or the ordinary action it gives way to when it has nothing to delete
    (or no ``conn`` to find out through)."""
    if conn is not None and _candidates(business, conn, action):
        return action
    return _INSTEAD[action]


def delete_actions(
    business: SimulatedBusiness,
) -> dict[str, Callable[[sa.Connection], int]]:
    """The delete actions of ``business``, by name; each returns the rows it wrote."""

    def remove_line(conn: sa.Connection) -> int:
        now = business.clock()
        orders, details = business.t["Orders"], business.t["OrderDetails"]
        [oid] = business.rng.choice(_candidates(business, conn, "remove_line"))
        lines = conn.execute(
            sa.select(details.c.OrderLine).where(details.c.OrderID == oid).order_by("OrderLine")
        ).scalars()
        line = business.rng.choice(list(lines))
        rows = conn.execute(
            sa.delete(details).where(details.c.OrderID == oid, details.c.OrderLine == line)
        ).rowcount
        subtotal, tax = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(details.c.PriceTotal), 0),
                sa.func.coalesce(sa.func.sum(details.c.Tax), 0),
            ).where(details.c.OrderID == oid)
        ).one()
        subtotal = Decimal(subtotal).quantize(_CENTS)
        tax = Decimal(tax).quantize(_CENTS)
        shipping = Decimal("7.95") if subtotal < 100 else Decimal(0)
        total = subtotal + tax + shipping
        rows += conn.execute(
            sa.update(orders)
            .where(orders.c.OrderID == oid)
            .values(
                SubTotal=subtotal,
                TaxTotal=tax,
                ShippingTotal=shipping,
                Total=total,
                ModifiedDate=now,
            )
        ).rowcount
        if oid in business.open_orders:
            status, cid, _total, paid = business.open_orders[oid]
            business.open_orders[oid] = (status, cid, total, paid)
        return rows

    def delete_payment(conn: sa.Connection) -> int:
        payments = business.t["Payments"]
        pid, oid, amount = business.rng.choice(_candidates(business, conn, "delete_payment"))
        if oid in business.open_orders:
            status, cid, total, paid = business.open_orders[oid]
            business.open_orders[oid] = (status, cid, total, paid - Decimal(amount))
        return conn.execute(sa.delete(payments).where(payments.c.PaymentID == pid)).rowcount

    def delete_order(conn: sa.Connection) -> int:
        orders, details = business.t["Orders"], business.t["OrderDetails"]
        [oid] = business.rng.choice(_candidates(business, conn, "delete_order"))
        if oid in business.open_orders:
            del business.open_orders[oid]
        rows = conn.execute(sa.delete(details).where(details.c.OrderID == oid)).rowcount
        return rows + conn.execute(sa.delete(orders).where(orders.c.OrderID == oid)).rowcount

    def delete_customer(conn: sa.Connection) -> int:
        [cid] = business.rng.choice(_candidates(business, conn, "delete_customer"))
        rows = 0
        for table in ("CustomerSites", "CustomerAccounts", "Customers"):
            rows += conn.execute(
                sa.delete(business.t[table]).where(business.t[table].c.CustomerID == cid)
            ).rowcount
        business.customers.remove(cid)
        return rows

    return {
        "remove_line": remove_line,
        "delete_payment": delete_payment,
        "delete_order": delete_order,
        "delete_customer": delete_customer,
    }
