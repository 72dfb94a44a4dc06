"""The Exigo-style sync database: SQLAlchemy models of the six queue tables.

Shared: the producer reads these tables, the consumers' reconciliation compares
targets with them, and the simulator (only it) creates and writes them.

Columns follow Exigo's sync database (CustomerID, OrderStatusID, money as exact
decimals, ship-to address on the order, CreatedDate/ModifiedDate on every row).
Dates are stored naive, in the source's local time zone, as Exigo does; the
``source_timezone`` setting says which zone that is. On SQL Server the money
columns are read through :func:`queuestream.sqlserver.contract_decimal` (MONEY's
four decimals brought to the contract's scale when exact); the other databases
read the same types as before. The values' conventions (naive local stamps, the
order status codes) live in :mod:`queuestream.source_values`, re-exported here.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from queuestream.source_values import ORDER_STATUS, to_aware, to_source_local
from queuestream.sqlserver import contract_decimal
from queuestream.tables import TABLES

__all__ = [
    "ORDER_STATUS",
    "Base",
    "Customer",
    "CustomerAccount",
    "CustomerSite",
    "Order",
    "OrderDetail",
    "Payment",
    "create_source_schema",
    "source_table",
    "to_aware",
    "to_source_local",
]

Money = contract_decimal(16, 2)
Price = contract_decimal(16, 4)
Qty = contract_decimal(12, 4)


class Base(DeclarativeBase):
    pass


class _Stamped:
    CreatedDate: Mapped[datetime] = mapped_column(sa.DateTime(), nullable=False)
    ModifiedDate: Mapped[datetime] = mapped_column(sa.DateTime(), nullable=False, index=True)


class Customer(_Stamped, Base):
    __tablename__ = "Customers"
    CustomerID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    FirstName: Mapped[str] = mapped_column(sa.String(50))
    LastName: Mapped[str] = mapped_column(sa.String(50))
    Company: Mapped[str | None] = mapped_column(sa.String(100))
    CustomerTypeID: Mapped[int] = mapped_column(sa.Integer)
    CustomerStatusID: Mapped[int] = mapped_column(sa.Integer)
    Email: Mapped[str | None] = mapped_column(sa.String(100))
    Phone: Mapped[str | None] = mapped_column(sa.String(50))
    MainAddress1: Mapped[str | None] = mapped_column(sa.String(100))
    MainAddress2: Mapped[str | None] = mapped_column(sa.String(100))
    MainCity: Mapped[str | None] = mapped_column(sa.String(50))
    MainState: Mapped[str | None] = mapped_column(sa.String(10))
    MainZip: Mapped[str | None] = mapped_column(sa.String(20))
    MainCountry: Mapped[str | None] = mapped_column(sa.String(10))
    CurrencyCode: Mapped[str] = mapped_column(sa.String(3))
    LanguageID: Mapped[int] = mapped_column(sa.Integer)
    EnrollerID: Mapped[int | None] = mapped_column(sa.Integer)
    BirthDate: Mapped[datetime | None] = mapped_column(sa.DateTime())


class CustomerSite(_Stamped, Base):
    __tablename__ = "CustomerSites"
    CustomerID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    WebAlias: Mapped[str] = mapped_column(sa.String(50))
    FirstName: Mapped[str | None] = mapped_column(sa.String(50))
    LastName: Mapped[str | None] = mapped_column(sa.String(50))
    Company: Mapped[str | None] = mapped_column(sa.String(100))
    Email: Mapped[str | None] = mapped_column(sa.String(100))
    Phone: Mapped[str | None] = mapped_column(sa.String(50))
    Address1: Mapped[str | None] = mapped_column(sa.String(100))
    Address2: Mapped[str | None] = mapped_column(sa.String(100))
    City: Mapped[str | None] = mapped_column(sa.String(50))
    State: Mapped[str | None] = mapped_column(sa.String(10))
    Zip: Mapped[str | None] = mapped_column(sa.String(20))
    Country: Mapped[str | None] = mapped_column(sa.String(10))


class CustomerAccount(_Stamped, Base):
    __tablename__ = "CustomerAccounts"
    CustomerID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    PrimaryCreditCardNumberDisplay: Mapped[str | None] = mapped_column(sa.String(30))
    PrimaryCreditCardType: Mapped[int | None] = mapped_column(sa.Integer)
    PrimaryCreditCardExpirationMonth: Mapped[int | None] = mapped_column(sa.Integer)
    PrimaryCreditCardExpirationYear: Mapped[int | None] = mapped_column(sa.Integer)
    PrimaryBillingName: Mapped[str | None] = mapped_column(sa.String(100))
    BankAccountNumber: Mapped[str | None] = mapped_column(sa.String(30))
    BankRoutingNumber: Mapped[str | None] = mapped_column(sa.String(30))
    BankNameOnAccount: Mapped[str | None] = mapped_column(sa.String(100))
    BankAccountType: Mapped[int | None] = mapped_column(sa.Integer)


class Order(_Stamped, Base):
    __tablename__ = "Orders"
    OrderID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    CustomerID: Mapped[int] = mapped_column(sa.Integer, index=True)
    OrderStatusID: Mapped[int] = mapped_column(sa.Integer)
    OrderTypeID: Mapped[int] = mapped_column(sa.Integer)
    OrderDate: Mapped[datetime] = mapped_column(sa.DateTime())
    CurrencyCode: Mapped[str] = mapped_column(sa.String(3))
    WarehouseID: Mapped[int] = mapped_column(sa.Integer)
    ShipMethodID: Mapped[int] = mapped_column(sa.Integer)
    SubTotal: Mapped[Decimal] = mapped_column(Money)
    TaxTotal: Mapped[Decimal] = mapped_column(Money)
    ShippingTotal: Mapped[Decimal] = mapped_column(Money)
    Total: Mapped[Decimal] = mapped_column(Money)
    FirstName: Mapped[str | None] = mapped_column(sa.String(50))
    LastName: Mapped[str | None] = mapped_column(sa.String(50))
    Company: Mapped[str | None] = mapped_column(sa.String(100))
    Address1: Mapped[str | None] = mapped_column(sa.String(100))
    Address2: Mapped[str | None] = mapped_column(sa.String(100))
    City: Mapped[str | None] = mapped_column(sa.String(50))
    State: Mapped[str | None] = mapped_column(sa.String(10))
    Zip: Mapped[str | None] = mapped_column(sa.String(20))
    Country: Mapped[str | None] = mapped_column(sa.String(10))
    Email: Mapped[str | None] = mapped_column(sa.String(100))
    Phone: Mapped[str | None] = mapped_column(sa.String(50))
    TrackingNumber1: Mapped[str | None] = mapped_column(sa.String(50))
    ShippedDate: Mapped[datetime | None] = mapped_column(sa.DateTime())
    Notes: Mapped[str | None] = mapped_column(sa.Text)


class OrderDetail(_Stamped, Base):
    __tablename__ = "OrderDetails"
    OrderID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    OrderLine: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    ItemCode: Mapped[str] = mapped_column(sa.String(50))
    ItemDescription: Mapped[str | None] = mapped_column(sa.String(200))
    Quantity: Mapped[Decimal] = mapped_column(Qty)
    PriceEach: Mapped[Decimal] = mapped_column(Price)
    PriceTotal: Mapped[Decimal] = mapped_column(Money)
    Tax: Mapped[Decimal] = mapped_column(Money)
    WeightEach: Mapped[Decimal | None] = mapped_column(Price)


class Payment(_Stamped, Base):
    __tablename__ = "Payments"
    PaymentID: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    CustomerID: Mapped[int] = mapped_column(sa.Integer, index=True)
    OrderID: Mapped[int] = mapped_column(sa.Integer, index=True)
    PaymentTypeID: Mapped[int] = mapped_column(sa.Integer)
    PaymentDate: Mapped[datetime] = mapped_column(sa.DateTime())
    Amount: Mapped[Decimal] = mapped_column(Money)
    CurrencyCode: Mapped[str] = mapped_column(sa.String(3))
    AuthorizationCode: Mapped[str | None] = mapped_column(sa.String(50))
    Memo: Mapped[str | None] = mapped_column(sa.String(200))


def source_table(name: str) -> sa.Table:
    """The base table behind a contract table name such as ``order_details``."""
    spec = next(t for t in TABLES if t.name == name)
    table = Base.metadata.tables[spec.source]
    return table


def create_source_schema(engine: sa.Engine) -> None:
    """Create the sync database's tables where missing."""
    Base.metadata.create_all(engine)
