"""``queuestream sim``: realistic, reproducible activity in an Exigo-style sync database.

New customers (with their site and payment account), orders with lines,
payments, status changes on the way to shipping (with tracking numbers),
address edits, card updates and cancellations. The same seed on the same
starting database makes the same changes; timestamps are the clock's.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from queuestream.sync_schema import Base, create_source_schema

__all__ = ["ACTIONS", "SimStats", "Simulator"]

log = logging.getLogger(__name__)

_FIRST = [
    "Ava",
    "Liam",
    "Noah",
    "Emma",
    "Olivia",
    "Mia",
    "Lucas",
    "Sofia",
    "Mateo",
    "Zoe",
    "Ethan",
    "Isla",
    "Hugo",
    "Lena",
    "Omar",
    "Yuki",
    "Priya",
    "Chen",
    "Anna",
    "Jonas",
]
_LAST = [
    "Smith",
    "Garcia",
    "Müller",
    "Nguyen",
    "Rossi",
    "Kowalski",
    "Jansen",
    "Silva",
    "Dubois",
    "Tanaka",
    "Okafor",
    "Larsen",
    "Novak",
    "Cohen",
    "Patel",
    "O'Brien",
]
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


@dataclass
class SimStats:
    actions: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ACTIONS})
    rows_written: int = 0

    @property
    def total(self) -> int:
        return sum(self.actions.values())


class Simulator:
    """Writes business activity; each action is one source transaction."""

    def __init__(
        self,
        engine: sa.Engine,
        zone: ZoneInfo,
        seed: int = 42,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.zone = zone
        self.rng = random.Random(seed)
        self._clock = clock or (lambda: datetime.now(zone).replace(tzinfo=None))
        self.stats = SimStats()
        create_source_schema(engine)
        self.t = {name: Base.metadata.tables[name] for name in Base.metadata.tables}
        self._load_state()

    def _load_state(self) -> None:
        with self.engine.connect() as conn:

            def top(table: str, column: str) -> int:
                value = conn.execute(sa.select(sa.func.max(self.t[table].c[column]))).scalar()
                return int(value or 0)

            self.next_customer = top("Customers", "CustomerID") + 1
            self.next_order = top("Orders", "OrderID") + 1
            self.next_payment = top("Payments", "PaymentID") + 1
            self.customers = [
                r[0]
                for r in conn.execute(
                    sa.select(self.t["Customers"].c.CustomerID).order_by(
                        self.t["Customers"].c.CustomerID
                    )
                )
            ]
            orders = self.t["Orders"]
            self.open_orders: dict[int, tuple[int, int, Decimal, Decimal]] = {}
            for oid, status, cid, total in conn.execute(
                sa.select(
                    orders.c.OrderID, orders.c.OrderStatusID, orders.c.CustomerID, orders.c.Total
                )
                .where(orders.c.OrderStatusID.in_([PENDING, ACCEPTED, PRINTED]))
                .order_by(orders.c.OrderID)
            ):
                self.open_orders[oid] = (status, cid, Decimal(total), Decimal(0))

    # -- running ------------------------------------------------------------------
    def run(
        self,
        actions: int,
        rate: float | None = None,
        per_transaction: int = 1,
        stop: threading.Event | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> SimStats:
        """Perform ``actions`` actions, ``per_transaction`` a commit, ``rate`` a second at most."""
        started = time.monotonic()
        done = 0
        while done < actions and not (stop and stop.is_set()):
            chunk = min(per_transaction, actions - done)
            with self.engine.begin() as conn:
                for _ in range(chunk):
                    self.step(conn)
            done += chunk
            if on_progress:
                on_progress(chunk)
            if rate:
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    if stop:
                        stop.wait(ahead)
                    else:
                        time.sleep(ahead)
        return self.stats

    def step(self, conn: sa.Connection) -> str:
        names = list(ACTIONS)
        action = self.rng.choices(names, weights=[ACTIONS[n] for n in names])[0]
        if not self.customers:
            action = "new_customer"
        elif action in ("payment", "advance_order", "cancel_order") and not self.open_orders:
            action = "new_order"
        getattr(self, f"_{action}")(conn)
        self.stats.actions[action] += 1
        return action

    def _insert(self, conn: sa.Connection, table: str, rows: list[dict[str, Any]]) -> None:
        conn.execute(sa.insert(self.t[table]), rows)
        self.stats.rows_written += len(rows)

    def _update(self, conn: sa.Connection, table: str, where: Any, values: dict[str, Any]) -> None:
        result = conn.execute(sa.update(self.t[table]).where(where).values(**values))
        self.stats.rows_written += result.rowcount

    # -- actions ------------------------------------------------------------------
    def _address(self) -> dict[str, str]:
        city, state, zipcode, country = self.rng.choice(_CITIES)
        return {
            "Address1": f"{self.rng.randint(1, 9999)} {self.rng.choice(_STREETS)}",
            "City": city,
            "State": state,
            "Zip": zipcode,
            "Country": country,
        }

    def _new_customer(self, conn: sa.Connection) -> None:
        now = self._clock()
        cid = self.next_customer
        self.next_customer += 1
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        addr = self._address()
        email = f"{first}.{last}.{cid}@example.com".lower().replace("'", "")
        phone = f"+1-555-{self.rng.randint(1000, 9999)}"
        stamps = {"CreatedDate": now, "ModifiedDate": now}
        self._insert(
            conn,
            "Customers",
            [
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
                }
            ],
        )
        self._insert(
            conn,
            "CustomerSites",
            [
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
                }
            ],
        )
        self._insert(
            conn,
            "CustomerAccounts",
            [
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
                }
            ],
        )
        self.customers.append(cid)

    def _new_order(self, conn: sa.Connection) -> None:
        now = self._clock()
        cid = self.rng.choice(self.customers)
        oid = self.next_order
        self.next_order += 1
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
        self._insert(
            conn,
            "Orders",
            [
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
                }
            ],
        )
        self._insert(conn, "OrderDetails", lines)
        self.open_orders[oid] = (PENDING, cid, total, Decimal(0))

    def _pick_open_order(self) -> int:
        return self.rng.choice(sorted(self.open_orders))

    def _payment(self, conn: sa.Connection) -> None:
        now = self._clock()
        oid = self._pick_open_order()
        status, cid, total, paid = self.open_orders[oid]
        remaining = total - paid
        if remaining <= 0:
            return self._advance_order(conn, oid)
        amount = remaining if self.rng.random() < 0.8 else (remaining / 2).quantize(_CENTS)
        pid = self.next_payment
        self.next_payment += 1
        self._insert(
            conn,
            "Payments",
            [
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
                }
            ],
        )
        self.open_orders[oid] = (status, cid, total, paid + amount)
        return None

    def _advance_order(self, conn: sa.Connection, oid: int | None = None) -> None:
        now = self._clock()
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
        self._update(conn, "Orders", self.t["Orders"].c.OrderID == oid, values)

    def _cancel_order(self, conn: sa.Connection) -> None:
        now = self._clock()
        oid = self._pick_open_order()
        del self.open_orders[oid]
        self._update(
            conn,
            "Orders",
            self.t["Orders"].c.OrderID == oid,
            {"OrderStatusID": CANCELED, "ModifiedDate": now},
        )

    def _address_edit(self, conn: sa.Connection) -> None:
        now = self._clock()
        cid = self.rng.choice(self.customers)
        addr = self._address()
        self._update(
            conn,
            "Customers",
            self.t["Customers"].c.CustomerID == cid,
            {
                "MainAddress1": addr["Address1"],
                "MainCity": addr["City"],
                "MainState": addr["State"],
                "MainZip": addr["Zip"],
                "MainCountry": addr["Country"],
                "ModifiedDate": now,
            },
        )
        self._update(
            conn,
            "CustomerSites",
            self.t["CustomerSites"].c.CustomerID == cid,
            {**addr, "ModifiedDate": now},
        )

    def _card_update(self, conn: sa.Connection) -> None:
        now = self._clock()
        cid = self.rng.choice(self.customers)
        self._update(
            conn,
            "CustomerAccounts",
            self.t["CustomerAccounts"].c.CustomerID == cid,
            {
                "PrimaryCreditCardNumberDisplay": f"5500000000{self.rng.randint(100000, 999999)}",
                "PrimaryCreditCardExpirationYear": now.year + self.rng.randint(1, 5),
                "ModifiedDate": now,
            },
        )
