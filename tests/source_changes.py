"""Change events made straight from a source database's rows, with no Kafka.

Unit tests of the targets feed these to ``Target.apply``: the same shape the
runtime decodes from the topics (aware UTC timestamps, exact decimals, the
source version in microseconds).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.changes import Change, version_of
from queuestream.sync_schema import source_table
from queuestream.tables import TABLES_BY_NAME

__all__ = [
    "SteppingClock",
    "change",
    "delete_rows",
    "order_row",
    "shrink_order",
    "source_changes",
]

_offsets = itertools.count()


class SteppingClock:
    """Naive source-local time advancing one millisecond per reading: reproducible."""

    def __init__(self, start: datetime) -> None:
        self.now = start.replace(tzinfo=None)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def order_row(
    order_id: int, customer: int, *, created: datetime, modified: datetime, **values: Any
) -> dict[str, Any]:
    """An Orders row (open, USD, 10.00) as a change carries it; ``values`` override."""
    return {
        "OrderID": order_id,
        "CustomerID": customer,
        "OrderStatusID": 2,
        "OrderTypeID": 1,
        "OrderDate": created,
        "CurrencyCode": "USD",
        "WarehouseID": 1,
        "ShipMethodID": 1,
        "SubTotal": 10,
        "TaxTotal": 0,
        "ShippingTotal": 0,
        "Total": 10,
        "FirstName": None,
        "LastName": None,
        "Company": None,
        "Address1": None,
        "Address2": None,
        "City": None,
        "State": None,
        "Zip": None,
        "Country": None,
        "Email": None,
        "Phone": None,
        "TrackingNumber1": None,
        "ShippedDate": None,
        "Notes": None,
        "CreatedDate": created,
        "ModifiedDate": modified,
        **values,
    }


def change(
    table: str,
    row: Mapping[str, Any],
    *,
    op: str = "u",
    refresh_id: str = "test-refresh",
    partition: int = 0,
) -> Change:
    """A change of ``table`` whose ``after`` is ``row`` (timestamps already aware)."""
    spec = TABLES_BY_NAME[table]
    key = {k: row[k] for k in spec.key}
    return Change(
        table=table,
        op=op,
        key=key,
        row=None if op == "d" else dict(row),
        version=version_of(row["ModifiedDate"]),
        refresh_id=refresh_id,
        topic=f"test.{table}",
        partition=partition,
        offset=next(_offsets),
        timestamp_ms=0,
        raw_key=None,
        raw_value=None,
    )


def source_changes(
    engine: sa.Engine, zone: ZoneInfo, tables: tuple[str, ...]
) -> dict[str, list[Change]]:
    """Every current row of ``tables`` as an upsert change, in ModifiedDate order."""
    found: dict[str, list[Change]] = {}
    with engine.connect() as conn:
        for name in tables:
            table = source_table(name)
            query = sa.select(table).order_by(table.c.ModifiedDate)
            found[name] = [change(name, row) for row in _aware_rows(conn, table, query, zone)]
    return found


def delete_rows(
    engine: sa.Engine, zone: ZoneInfo, name: str, where: sa.ColumnElement[bool]
) -> list[Change]:
    """Delete the rows of source table ``name`` that ``where`` picks; their delete events.

    Each delete carries the row as it was (its ModifiedDate is the delete's version),
    as the producer publishes a delete with the last row image it published.
    """
    table = source_table(name)
    with engine.begin() as conn:
        rows = _aware_rows(conn, table, sa.select(table).where(where), zone)
        conn.execute(sa.delete(table).where(where))
    return [change(name, row, op="d") for row in rows]


def shrink_order(engine: sa.Engine, order_id: int, amount: Any, modified: Any) -> None:
    """An order changes with a line removed: totals down by ``amount``, stamped ``modified``."""
    orders = source_table("orders")
    with engine.begin() as conn:
        conn.execute(
            sa.update(orders)
            .where(orders.c.OrderID == order_id)
            .values(
                SubTotal=orders.c.SubTotal - amount,
                Total=orders.c.Total - amount,
                ModifiedDate=modified,
            )
        )


def _aware_rows(
    conn: sa.Connection, table: sa.Table, query: sa.Select[Any], zone: ZoneInfo
) -> list[dict[str, Any]]:
    """The rows ``query`` reads, timestamps made aware (UTC) as events carry them."""
    timestamps = [c.name for c in table.columns if isinstance(c.type, sa.DateTime)]
    rows = []
    for record in conn.execute(query):
        row = dict(record._mapping)
        for column in timestamps:
            if row[column] is not None:
                row[column] = row[column].replace(tzinfo=zone).astimezone(UTC)
        rows.append(row)
    return rows
