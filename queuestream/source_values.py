"""How the sync database writes its values: naive local stamps and Exigo's status codes.

Apart from the tables' models (:mod:`queuestream.sync_schema`) so that what reads
these conventions, a consumer applying events, does not import SQLAlchemy's ORM
with the models: about 0.1 s of every ``consume`` and of every ``rebuild`` worker
process's start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

__all__ = ["ORDER_STATUS", "to_aware", "to_source_local"]

#: Exigo's OrderStatusID values.
ORDER_STATUS = {
    1: "Incomplete",
    2: "Pending",
    3: "CCDeclined",
    4: "ACHDeclined",
    5: "Canceled",
    6: "CCPending",
    7: "ACHPending",
    8: "Accepted",
    9: "Printed",
    10: "Shipped",
}


def to_aware(value: datetime, zone: ZoneInfo) -> datetime:
    """A naive source timestamp (local to ``zone``) as an aware UTC datetime."""
    return value.replace(tzinfo=zone).astimezone(UTC)


def to_source_local(value: datetime, zone: ZoneInfo) -> datetime:
    """An aware datetime as the naive local time the source stamps with."""
    return value.astimezone(zone).replace(tzinfo=None)
