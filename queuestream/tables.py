"""The six tables of the queue snapshot, as the event contract names them.

Shared by the producer (which reads them) and the consumers (which apply them in
this order: customers before what belongs to them, orders before their lines).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BATCHES", "TABLES", "TABLES_BY_NAME", "TableSpec", "topic_for"]


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str  # contract name: topic suffix and schema file stem, e.g. "order_details"
    source: str  # table name in the sync database and in its queue schema, e.g. "OrderDetails"
    key: tuple[str, ...]  # primary key columns
    customer_column: str | None  # column holding CustomerID; None: found through Orders

    @property
    def partition_via_order(self) -> bool:
        return self.customer_column is None


#: In foreign-key (apply) order.
TABLES: tuple[TableSpec, ...] = (
    TableSpec("customers", "Customers", ("CustomerID",), "CustomerID"),
    TableSpec("customer_sites", "CustomerSites", ("CustomerID",), "CustomerID"),
    TableSpec("customer_accounts", "CustomerAccounts", ("CustomerID",), "CustomerID"),
    TableSpec("orders", "Orders", ("OrderID",), "CustomerID"),
    TableSpec("order_details", "OrderDetails", ("OrderID", "OrderLine"), None),
    TableSpec("payments", "Payments", ("PaymentID",), "CustomerID"),
)

TABLES_BY_NAME: dict[str, TableSpec] = {t.name: t for t in TABLES}

BATCHES = "batches"


def topic_for(prefix: str, table: str) -> str:
    """``<prefix>.<table>``, e.g. ``exigo.orders``; ``table`` may be ``batches``."""
    return f"{prefix}.{table}"
