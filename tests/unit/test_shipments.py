"""The shipment rules of consumers/shipping/shipments.py, on their own.

The target applies them in SQL (``shipment_status``, over the stored order and
shipment); reconciliation reads them in Python (``source_shipment``, from the
source's order alone). For an order the target sees for the first time both must
say the same, whatever its status.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from consumers.shipping.shipments import CANCELED, shipment_status, source_shipment
from queuestream.sync_schema import ORDER_STATUS

STAMP = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status_id", "shipped_date", "expected"),
    [
        (2, None, None),  # Pending: no shipment
        (8, None, ("ready", False)),
        (9, None, ("printed", False)),
        (10, STAMP, ("shipped", False)),
        (CANCELED, None, None),  # cancelled before shipping: none, or a canceled one
        (CANCELED, STAMP, ("shipped", True)),  # cancelled after shipping: a return
    ],
)
def test_source_shipment(status_id: int, shipped_date: datetime | None, expected: Any) -> None:
    assert source_shipment(status_id, shipped_date) == expected


def _first_sighting(status_id: int, shipped: bool) -> str | None:
    """``shipment_status`` of an order with no stored shipment, evaluated by SQLite."""
    order = sa.select(
        sa.literal(status_id, sa.Integer).label("status_id"),
        sa.literal("2024-03-01" if shipped else None, sa.String).label("shipped_date"),
    ).subquery("o")
    old = sa.select(
        sa.literal(None, sa.Integer).label("order_id"),
        sa.literal(None, sa.String).label("status"),
    ).subquery("old")
    query = sa.select(shipment_status(order.c, old.c)).select_from(order).join(old, sa.true())
    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as conn:
            found: str | None = conn.execute(query).scalar_one()
    finally:
        engine.dispose()
    return found


@pytest.mark.parametrize("status_id", sorted(ORDER_STATUS))
@pytest.mark.parametrize("shipped", [False, True])
def test_sql_and_python_rules_agree_on_a_first_sighting(status_id: int, shipped: bool) -> None:
    expected = source_shipment(status_id, STAMP if shipped else None)
    assert _first_sighting(status_id, shipped) == (None if expected is None else expected[0])
