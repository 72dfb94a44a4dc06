"""What a snapshot reads of every table, every way it reads, and each value with its type:
to compare a driver's own cursor with SQLAlchemy's reading of the same snapshot
(``tests/integration/test_source_driver_rows.py`` for PostgreSQL,
``tests/unit/test_sqlite_rows.py`` for SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from producer.changed_rows import ChangedRow
from producer.simulator import Simulator
from producer.source_reader import FrozenSnapshot, SourceReader
from queuestream.databases import create_engine
from queuestream.settings import Settings, load_settings
from queuestream.sync_schema import Base
from queuestream.tables import TABLES

#: Every row a simulated source holds.
ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=2))


def simulate_with_an_orphaned_line(engine: sa.Engine, zone: ZoneInfo, actions: int) -> None:
    """A simulated source, then an order deleted with its lines left: a line whose
    CustomerID (read through its order) is NULL."""
    Simulator(engine, zone, seed=11).run(actions, per_transaction=40)
    orders = Base.metadata.tables["Orders"]
    details = Base.metadata.tables["OrderDetails"]
    with engine.begin() as conn:
        gone = conn.execute(sa.select(sa.func.min(details.c.OrderID))).scalar_one()
        conn.execute(orders.delete().where(orders.c.OrderID == gone))


def readings(snapshot: FrozenSnapshot) -> dict[str, list[ChangedRow]]:
    """Each table's changed rows, and its rows after a key (the sweep's reading)."""
    found: dict[str, list[ChangedRow]] = {}
    for spec in TABLES:
        found[spec.name] = list(snapshot.changed_rows(spec, *ALL_TIME))
        found[f"{spec.name} after"] = snapshot.rows_after(spec, (1, 0), 50)
    return found


def both_readings(
    settings: Settings, driver: str
) -> tuple[dict[str, list[ChangedRow]], dict[str, list[ChangedRow]]]:
    """:func:`readings` of one snapshot through the driver's cursor (the snapshot's flag
    ``driver`` set, as it is by default), then through SQLAlchemy (the flag cleared)."""
    reader = SourceReader(create_engine(settings.source_url), settings)
    try:
        with reader.frozen() as snapshot:
            assert getattr(snapshot, driver)  # the driver's cursor is the default here
            through_driver = readings(snapshot)
            setattr(snapshot, driver, False)
            through_sqlalchemy = readings(snapshot)
    finally:
        reader.engine.dispose()
    return through_driver, through_sqlalchemy


def typed(rows: list[ChangedRow]) -> list[tuple[Any, ...]]:
    """Every value with its type: a str where a Decimal was is a difference."""
    return [
        (changed.customer_id, tuple((k, type(v), v) for k, v in changed.row.items()))
        for changed in rows
    ]


#: Values of another type than their column's, as SQLite keeps them: (table, key column,
#: column, value, why it is refused).
WRONG_TYPES = [
    ("Orders", "OrderID", "Total", "not-a-number", "'not-a-number' is not a decimal"),
    ("Orders", "OrderID", "OrderDate", "garbage", "'garbage' is not a date and time"),
    ("Orders", "OrderID", "CustomerID", "x", "'x' is not an integer"),
    ("Orders", "OrderID", "WarehouseID", 2.5, "2.5 is not an integer"),
    ("Payments", "PaymentID", "ModifiedDate", "garbage", "'garbage' is not a date and time"),
]


def wrong_typed_source(path: Path, zone: str) -> tuple[Settings, dict[str, int]]:
    """A simulated SQLite source with each of :data:`WRONG_TYPES` in a row of its own:
    the settings, and each column's row's key. ModifiedDate's row is read in procedure
    mode (a window's range of dates, compared as text, leaves 'garbage' out)."""
    url = f"sqlite:///{path}"
    settings = load_settings(None, source_url=url, source_timezone=zone)
    engine = create_engine(url, writer=True)
    keys: dict[str, int] = {}
    try:
        Simulator(engine, settings.zone, seed=3).run(300, per_transaction=50)
        with engine.begin() as conn:
            for number, (table, key, column, value, _why) in enumerate(WRONG_TYPES):
                found = conn.exec_driver_sql(
                    f'SELECT "{key}" FROM "{table}" ORDER BY "{key}" LIMIT 1 OFFSET {number}'
                ).scalar_one()
                conn.exec_driver_sql(
                    f'UPDATE "{table}" SET "{column}" = ? WHERE "{key}" = ?', (value, found)
                )
                keys[column] = found
    finally:
        engine.dispose()
    return settings, keys
