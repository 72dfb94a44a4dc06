"""What each ``queuestream sim`` action writes: the simulated business and its rows.

:class:`SimulatedBusiness` knows what exists in the sync database (the next ids,
the customers, the orders still open) and performs one business action at a
time through a connection it is given: a new customer (with their site and
payment account), an order with lines, a payment, an order's next status on the
way to shipping (with a tracking number), an address edit, a card update, a
cancellation; and, when the driver asks for them, the deletes of
:mod:`producer.sim_deletes`. Every random choice comes from the generator it is handed, in a
fixed order, so the same seed on the same starting database writes the same
rows; timestamps are the clock's.

Several simulators can write one source at once when each is given its share of
the ids (``stride`` simulators, each its own ``offset`` below it): a simulator
allocates the ids ``offset``, ``offset + stride``, ... above the largest in the
source, and touches only the customers and orders whose ids are its own, so no
two of them write one row or wait for each other's locks.

Choosing which action comes next, and when to commit, is the driver's
(:mod:`producer.simulator`); it calls :meth:`flush <SimulatedBusiness.flush>`
before committing, as the actions hold their rows in
:class:`~producer.sim_writes.PendingWrites` until then. Over 400 lines: the
actions are one business's, read side by side with the state they share.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from producer.sim_deletes import DELETE_ACTIONS, delete_actions, feasible_delete
from producer.sim_writes import PendingWrites
from queuestream.errors import ConfigurationError
from queuestream.sync_schema import Base

__all__ = ["ACTIONS", "SimulatedBusiness"]

_FIRST = (
    "Ava Liam Noah Emma Olivia Mia Lucas Sofia Mateo Zoe Ethan Isla Hugo Lena Omar Yuki Priya Chen"
    " Anna Jonas"
).split()
_LAST = (
    "Smith Garcia Müller Nguyen Rossi Kowalski Jansen Silva Dubois Tanaka Okafor Larsen"
    " Novak Cohen Patel O'Brien"
).split()
_CITIES = [
    ("Dallas", "TX", "75201", "US"),
    ("Provo", "UT", "84601", "US"),
    ("Irvine", "CA", "92602", "US"),
    ("Toronto", "ON", "M5H 2N2", "CA"),
    ("Utrecht", "UT", "3511", "NL"),
    ("Leeds", "", "LS1 4AP", "GB"),
]
_STREETS = ["Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Pine Rd", "Lake Blvd"]
_ITEMS = [
    ("KIT-100", "Starter kit", Decimal("49.9500"), Decimal("1.2500")),
    ("VIT-30", "Vitamin pack, 30 days", Decimal("34.5000"), Decimal("0.4000")),
    ("PRO-1KG", "Protein, 1 kg", Decimal("39.0000"), Decimal("1.0000")),
    ("TEA-20", "Herbal tea, 20 bags", Decimal("12.7500"), Decimal("0.1000")),
    ("OIL-15", "Essential oil, 15 ml", Decimal("19.9900"), Decimal("0.0500")),
    ("BAR-12", "Snack bars, 12", Decimal("24.0000"), Decimal("0.7200")),
]
_CENTS = Decimal("0.01")
_TAX_RATE = Decimal("0.0725")
PENDING, ACCEPTED, PRINTED, SHIPPED, CANCELED = 2, 8, 9, 10, 5
_NEXT_STATUS = {PENDING: ACCEPTED, ACCEPTED: PRINTED, PRINTED: SHIPPED}

#: Business actions and their relative weights.
ACTIONS: dict[str, int] = {
    "new_customer": 18,
    "new_order": 34,
    "payment": 12,
    "advance_order": 20,
    "address_edit": 7,
    "card_update": 3,
    "cancel_order": 6,
}
#: Actions that need an open order; without one, an order comes first.
_ON_OPEN_ORDERS = ("payment", "advance_order", "cancel_order")


class _OpenOrders(dict[int, tuple[int, int, Decimal, Decimal]]):
    """Open orders by id, their ids also kept sorted (:attr:`ids`): an order is drawn
    by its index in key order, and sorting every draw cost more than the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[int] = []

    def __setitem__(self, oid: int, value: tuple[int, int, Decimal, Decimal]) -> None:
        if oid not in self:
            bisect.insort(self.ids, oid)
        super().__setitem__(oid, value)

    def __delitem__(self, oid: int) -> None:
        super().__delitem__(oid)
        del self.ids[bisect.bisect_left(self.ids, oid)]


class SimulatedBusiness:
    """The state of the simulated business, and its actions; each returns the rows it wrote."""

    def __init__(
        self,
        conn: sa.Connection,
        rng: random.Random,
        clock: Callable[[], datetime],
        stride: int = 1,
        offset: int = 0,
    ) -> None:
        if stride < 1 or not 0 <= offset < stride:
            msg = (
                f"simulator id offset {offset} and stride {stride}: the stride must be 1 or"
                " more and the offset from 0 to stride - 1 (one offset per simulator)"
            )
            raise ConfigurationError(msg)
        self.stride, self.offset = stride, offset
        self.rng = rng
        self.clock = clock
        self.t = {name: Base.metadata.tables[name] for name in Base.metadata.tables}
        self.pending = PendingWrites(self.t)
        self._actions: dict[str, Callable[[sa.Connection], int]] = {
            "new_customer": self._new_customer,
            "new_order": self._new_order,
            "payment": self._payment,
            "advance_order": self._advance_order,
            "address_edit": self._address_edit,
            "card_update": self._card_update,
            "cancel_order": self._cancel_order,
            **delete_actions(self),
        }
        self._load_state(conn)

    def _load_state(self, conn: sa.Connection) -> None:
        def top(table: str, column: str) -> int:
            """The first id of this simulator's share above the largest in ``table``."""
            value = conn.execute(sa.select(sa.func.max(self.t[table].c[column]))).scalar()
            after = int(value or 0) + 1
            return after + (self.offset - after) % self.stride

        self.next_customer = top("Customers", "CustomerID")
        self.next_order = top("Orders", "OrderID")
        self.next_payment = top("Payments", "PaymentID")
        self.customers = [
            r[0]
            for r in conn.execute(
                sa.select(self.t["Customers"].c.CustomerID).order_by(
                    self.t["Customers"].c.CustomerID
                )
            )
            if self.owns(r[0])
        ]
        orders = self.t["Orders"]
        self.open_orders = _OpenOrders()
        for oid, status, cid, total in conn.execute(
            sa.select(orders.c.OrderID, orders.c.OrderStatusID, orders.c.CustomerID, orders.c.Total)
            .where(orders.c.OrderStatusID.in_([PENDING, ACCEPTED, PRINTED]))
            .order_by(orders.c.OrderID)
        ):
            if self.owns(oid):
                self.open_orders[oid] = (status, cid, Decimal(total), Decimal(0))

    def owns(self, key: int) -> bool:
        """Whether the customer or order ``key`` is this simulator's to touch (its share)."""
        return key % self.stride == self.offset

    def feasible(self, action: str, conn: sa.Connection | None = None) -> str:
        """``action``, or what must come first: a customer, or an order to pay, move or cancel.
        A delete (:data:`~producer.sim_deletes.DELETE_ACTIONS`) reads its candidates
        through ``conn``; without one it gives way to the ordinary action."""
        if action in DELETE_ACTIONS:
            if conn is not None:
                self.pending.flush(conn)
            action = feasible_delete(self, conn, action)
        if not self.customers:
            return "new_customer"
        if action in _ON_OPEN_ORDERS and not self.open_orders:
            return "new_order"
        return action

    def perform(self, conn: sa.Connection, action: str) -> int:
        """Write ``action`` (a name of :data:`ACTIONS`) through ``conn``, or hold its rows
        until :meth:`flush`; the rows written. A delete reads the database: it flushes first."""
        if action in DELETE_ACTIONS:
            self.pending.flush(conn)
        return self._actions[action](conn)

    def flush(self, conn: sa.Connection) -> None:
        """Write the rows the actions hold through ``conn``; before every commit."""
        self.pending.flush(conn)

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        return self.pending.insert(table, [row])

    def _update(self, table: str, key: int, values: dict[str, Any]) -> int:
        """Update the row of ``table`` keyed ``key`` (OrderID for Orders, else CustomerID)."""
        return self.pending.update(
            table, "OrderID" if table == "Orders" else "CustomerID", key, values
        )

    def _address(self) -> dict[str, str]:
        city, state, zipcode, country = self.rng.choice(_CITIES)
        return {
            "Address1": f"{self.rng.randint(1, 9999)} {self.rng.choice(_STREETS)}",
            "City": city,
            "State": state,
            "Zip": zipcode,
            "Country": country,
        }

    def _new_customer(self, conn: sa.Connection) -> int:
        now = self.clock()
        cid = self.next_customer
        self.next_customer += self.stride
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        addr = self._address()
        email = f"{first}.{last}.{cid}@example.com".lower().replace("'", "")
        phone = f"+1-555-{self.rng.randint(1000, 9999)}"
        stamps = {"CreatedDate": now, "ModifiedDate": now}
        rows = self._insert(
            "Customers",
            {
                "CustomerID": cid,
                "FirstName": first,
                "LastName": last,
                "Company": None,
                "CustomerTypeID": self.rng.choice([1, 2, 3]),
                "CustomerStatusID": 1,
                "Email": email,
                "Phone": phone,
                "MainAddress1": addr["Address1"],
                "MainAddress2": None,
                "MainCity": addr["City"],
                "MainState": addr["State"],
                "MainZip": addr["Zip"],
                "MainCountry": addr["Country"],
                "CurrencyCode": "usd" if addr["Country"] == "US" else "eur",
                "LanguageID": 0,
                "EnrollerID": self.rng.choice(self.customers) if self.customers else None,
                "BirthDate": None,
                **stamps,
            },
        )
        rows += self._insert(
            "CustomerSites",
            {
                "CustomerID": cid,
                "WebAlias": f"{first.lower()}{cid}",
                "FirstName": first,
                "LastName": last,
                "Company": None,
                "Email": email,
                "Phone": phone,
                **addr,
                "Address2": None,
                **stamps,
            },
        )
        rows += self._insert(
            "CustomerAccounts",
            {
                "CustomerID": cid,
                "PrimaryCreditCardNumberDisplay": f"4111{self.rng.randint(10**11, 10**12 - 1)}",
                "PrimaryCreditCardType": 1,
                "PrimaryCreditCardExpirationMonth": self.rng.randint(1, 12),
                "PrimaryCreditCardExpirationYear": now.year + self.rng.randint(1, 5),
                "PrimaryBillingName": f"{first} {last}",
                "BankAccountNumber": str(self.rng.randint(10**9, 10**10 - 1)),
                "BankRoutingNumber": str(self.rng.randint(10**8, 10**9 - 1)),
                "BankNameOnAccount": f"{first} {last}",
                "BankAccountType": 1,
                **stamps,
            },
        )
        self.customers.append(cid)
        return rows

    def _new_order(self, conn: sa.Connection) -> int:
        now = self.clock()
        cid = self.rng.choice(self.customers)
        oid = self.next_order
        self.next_order += self.stride
        lines = []
        subtotal = tax = Decimal(0)
        for line in range(1, self.rng.randint(1, 5) + 1):
            code, desc, price, weight = self.rng.choice(_ITEMS)
            qty = Decimal(self.rng.randint(1, 4))
            total = (price * qty).quantize(_CENTS)
            line_tax = (total * _TAX_RATE).quantize(_CENTS)
            subtotal += total
            tax += line_tax
            lines.append(
                {
                    "OrderID": oid,
                    "OrderLine": line,
                    "ItemCode": code,
                    "ItemDescription": desc,
                    "Quantity": qty,
                    "PriceEach": price,
                    "PriceTotal": total,
                    "Tax": line_tax,
                    "WeightEach": weight,
                    "CreatedDate": now,
                    "ModifiedDate": now,
                }
            )
        shipping = Decimal("7.95") if subtotal < 100 else Decimal(0)
        total = subtotal + tax + shipping
        ship_to = self._address() if self.rng.random() < 0.7 else {}
        rows = self._insert(
            "Orders",
            {
                "OrderID": oid,
                "CustomerID": cid,
                "OrderStatusID": PENDING,
                "OrderTypeID": self.rng.choice([1, 1, 1, 4]),
                "OrderDate": now,
                "CurrencyCode": "usd",
                "WarehouseID": 1,
                "ShipMethodID": self.rng.choice([1, 2]),
                "SubTotal": subtotal,
                "TaxTotal": tax,
                "ShippingTotal": shipping,
                "Total": total,
                "FirstName": None,
                "LastName": None,
                "Company": None,
                "Address1": ship_to.get("Address1"),
                "Address2": None,
                "City": ship_to.get("City"),
                "State": ship_to.get("State"),
                "Zip": ship_to.get("Zip"),
                "Country": ship_to.get("Country"),
                "Email": None,
                "Phone": None,
                "TrackingNumber1": None,
                "ShippedDate": None,
                "Notes": None,
                "CreatedDate": now,
                "ModifiedDate": now,
            },
        )
        rows += self.pending.insert("OrderDetails", lines)
        self.open_orders[oid] = (PENDING, cid, total, Decimal(0))
        return rows

    def _pick_open_order(self) -> int:
        return self.rng.choice(self.open_orders.ids)

    def _payment(self, conn: sa.Connection) -> int:
        now = self.clock()
        oid = self._pick_open_order()
        status, cid, total, paid = self.open_orders[oid]
        remaining = total - paid
        if remaining <= 0:
            return self._advance_order(conn, oid)
        amount = remaining if self.rng.random() < 0.8 else (remaining / 2).quantize(_CENTS)
        pid = self.next_payment
        self.next_payment += self.stride
        rows = self._insert(
            "Payments",
            {
                "PaymentID": pid,
                "CustomerID": cid,
                "OrderID": oid,
                "PaymentTypeID": 1,
                "PaymentDate": now,
                "Amount": amount,
                "CurrencyCode": "usd",
                "AuthorizationCode": f"AUTH{self.rng.randint(100000, 999999)}",
                "Memo": None,
                "CreatedDate": now,
                "ModifiedDate": now,
            },
        )
        self.open_orders[oid] = (status, cid, total, paid + amount)
        return rows

    def _advance_order(self, conn: sa.Connection, oid: int | None = None) -> int:
        now = self.clock()
        oid = oid if oid is not None else self._pick_open_order()
        status, cid, total, paid = self.open_orders[oid]
        new = _NEXT_STATUS[status]
        values: dict[str, Any] = {"OrderStatusID": new, "ModifiedDate": now}
        if new == SHIPPED:
            values["TrackingNumber1"] = f"1Z{self.rng.randint(10**9, 10**10 - 1)}"
            values["ShippedDate"] = now
            del self.open_orders[oid]
        else:
            self.open_orders[oid] = (new, cid, total, paid)
        return self._update("Orders", oid, values)

    def _cancel_order(self, conn: sa.Connection) -> int:
        now = self.clock()
        oid = self._pick_open_order()
        del self.open_orders[oid]
        return self._update("Orders", oid, {"OrderStatusID": CANCELED, "ModifiedDate": now})

    def _address_edit(self, conn: sa.Connection) -> int:
        now = self.clock()
        cid = self.rng.choice(self.customers)
        addr = self._address()
        rows = self._update(
            "Customers",
            cid,
            {
                "MainAddress1": addr["Address1"],
                "MainCity": addr["City"],
                "MainState": addr["State"],
                "MainZip": addr["Zip"],
                "MainCountry": addr["Country"],
                "ModifiedDate": now,
            },
        )
        return rows + self._update("CustomerSites", cid, {**addr, "ModifiedDate": now})

    def _card_update(self, conn: sa.Connection) -> int:
        now = self.clock()
        cid = self.rng.choice(self.customers)
        return self._update(
            "CustomerAccounts",
            cid,
            {
                "PrimaryCreditCardNumberDisplay": f"5500000000{self.rng.randint(100000, 999999)}",
                "PrimaryCreditCardExpirationYear": now.year + self.rng.randint(1, 5),
                "ModifiedDate": now,
            },
        )
