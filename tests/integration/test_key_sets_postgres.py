"""The key filter on PostgreSQL: exactly its keys, with one array parameter.

On SQLite the filter is an IN list (tests/unit/test_key_sets.py); on PostgreSQL it
is ``= ANY(:keys)``, or ``IN (SELECT unnest(:keys))`` to probe an index key by key,
with an array typed as the column's unbounded type, so that a text key longer than
its VARCHAR(n) column is not cut to n characters (and does not match the row holding
its prefix), and a BIGINT key past 2**31 is not refused.

The producer asks which lines the orders of a refresh have now
(``FrozenSnapshot.keys_under``) by probing: on a PostgreSQL sync database, the answer
is every line of those orders and nothing else, in one statement (a semi-join over the
orders, which the planner runs as lookups in the lines' primary key where the table
is large beside them; ``make bench-freshness`` measures it).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

from producer.source_reader import SourceReader
from queuestream.databases import create_engine
from queuestream.settings import load_settings
from queuestream.sync_schema import Base, create_source_schema
from queuestream.tables import TABLES_BY_NAME
from tests.unit.test_key_sets import check_key_filter

LINES = Base.metadata.tables["OrderDetails"]


def test_the_key_filter_selects_exactly_its_keys_on_postgresql(postgres_url: str) -> None:
    check_key_filter(postgres_url)


def test_the_lines_of_a_refreshs_orders_come_in_one_statement(postgres_url: str) -> None:
    rng = random.Random(11)
    stamp = datetime(2026, 1, 5, 9, 30, tzinfo=UTC).replace(tzinfo=None)  # source-local, naive
    lines = {(order, line) for order in range(1, 4001) for line in range(1, rng.randint(0, 4) + 1)}
    engine = create_engine(postgres_url, writer=True)
    try:
        create_source_schema(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(LINES),
                [
                    {
                        "OrderID": order,
                        "OrderLine": line,
                        "ItemCode": "SKU",
                        "Quantity": Decimal(1),
                        "PriceEach": Decimal(2),
                        "PriceTotal": Decimal(2),
                        "Tax": Decimal(0),
                        "CreatedDate": stamp,
                        "ModifiedDate": stamp,
                    }
                    for order, line in sorted(lines)
                ],
            )
        # More orders than the IN lists of 1,000 it used to send, some without lines
        # and some not in the table at all.
        parents = set(rng.sample(range(1, 4001), 2500)) | {0, 4001, 2**31 - 1}
        statements: list[str] = []
        sa.event.listen(
            engine, "before_cursor_execute", lambda *a: statements.append(a[2]), named=False
        )
        reader = SourceReader(engine, load_settings(None, source_url=postgres_url))
        with reader.frozen() as snapshot:
            statements.clear()
            found = snapshot.keys_under(TABLES_BY_NAME["order_details"], parents)
        assert found == {key for key in lines if key[0] in parents}
        (asked,) = [s for s in statements if "OrderDetails" in s]
        assert "IN (SELECT unnest(" in asked, asked  # a semi-join over the keys
    finally:
        engine.dispose()
