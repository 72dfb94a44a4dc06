"""The overlap read narrowly (producer.window_rows) decides every row as the one query did.

The reference is the reading before it: every row of ``read_from <= ModifiedDate < end``
in one query, each tested by the overlap filter as it comes. On random rows around the
window's start, random ones of them published by the last refresh (their digests in the
filter's ``seen``), both give the same rows in the same order, the same digests recorded
for the next refresh and the same count skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.changed_rows import ChangedRow
from producer.source_reader import SourceReader
from producer.watermark import DigestMemo, OverlapFilter, Window, change_digest
from producer.window_rows import window_rows
from queuestream.databases import create_engine
from queuestream.settings import load_settings
from queuestream.sync_schema import Base, create_source_schema, to_source_local
from queuestream.tables import TABLES_BY_NAME

PAYMENTS = Base.metadata.tables["Payments"]
SPEC = TABLES_BY_NAME["payments"]
START = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
OVERLAP = timedelta(seconds=2)
WINDOW = Window(start=START, end=START + timedelta(seconds=3), read_from=START - OVERLAP)


def _payment(pid: int, stamp: datetime) -> dict[str, Any]:
    return {
        "PaymentID": pid,
        "CustomerID": pid % 7,
        "OrderID": pid,
        "PaymentTypeID": 1,
        "PaymentDate": stamp,
        "Amount": Decimal("12.50"),
        "CurrencyCode": "usd",
        "AuthorizationCode": None,
        "Memo": None,
        "CreatedDate": stamp,
        "ModifiedDate": stamp,
    }


def _reference(rows: Iterator[ChangedRow], overlap: OverlapFilter, zone: Any) -> list[int]:
    """The one-query reading: every row of the range, tested as it comes."""
    published = []
    for changed in rows:
        stamp = changed.row["ModifiedDate"]
        if overlap.needs_digest(stamp.replace(tzinfo=zone)):
            version = stamp.replace(tzinfo=zone)
            key = tuple(changed.row[k] for k in SPEC.key)
            if not overlap.admit(change_digest("payments", key, version), version):
                continue
        published.append(changed.row["PaymentID"])
    return published


@pytest.mark.parametrize("zone_name", ["UTC", "America/New_York"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stamps=st.lists(st.integers(-2_500, 3_500), min_size=0, max_size=40),
    seen_mask=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_the_narrow_overlap_read_decides_as_the_one_query_did(
    tmp_path_factory: pytest.TempPathFactory,
    zone_name: str,
    stamps: list[int],
    seen_mask: list[bool],
) -> None:
    zone = ZoneInfo(zone_name)
    path: Path = tmp_path_factory.mktemp("source") / "sync.db"
    url = f"sqlite:///{path}"
    engine = create_engine(url, writer=True)
    try:
        create_source_schema(engine)
        rows = [
            _payment(pid, to_source_local(START + timedelta(milliseconds=ms), zone))
            for pid, ms in enumerate(stamps, start=1)
        ]
        with engine.begin() as conn:
            if rows:
                conn.execute(sa.insert(PAYMENTS), rows)
        # What the last refresh published of the overlap: random rows stamped in it.
        seen = frozenset(
            change_digest("payments", (row["PaymentID"],), row["ModifiedDate"].replace(tzinfo=zone))
            for row, was_seen in zip(rows, seen_mask, strict=False)
            if was_seen and -2_000 <= stamps[row["PaymentID"] - 1] < 0
        )
        reader = SourceReader(
            engine, load_settings(None, source_url=url, source_timezone=zone_name)
        )

        def fresh() -> OverlapFilter:
            return OverlapFilter(window=WINDOW, seen=seen, keep_from=WINDOW.end - OVERLAP)

        with reader.frozen() as snapshot:
            old, new = fresh(), fresh()
            expected = _reference(
                snapshot.changed_rows(SPEC, WINDOW.read_from, WINDOW.end), old, zone
            )
            got = [c.row["PaymentID"] for c in window_rows(snapshot, SPEC, WINDOW, new, zone)]
            # The reader's digests kept from one refresh to the next: the same decisions.
            digests = DigestMemo(zone)
            list(window_rows(snapshot, SPEC, WINDOW, fresh(), zone, digests))
            digests.next_refresh()
            again = fresh()
            remembered = [
                c.row["PaymentID"]
                for c in window_rows(snapshot, SPEC, WINDOW, again, zone, digests)
            ]
        assert got == expected
        assert new.packed() == old.packed()
        assert new.skipped == old.skipped
        assert remembered == expected
        assert again.packed() == old.packed()
        assert again.skipped == old.skipped
        if any(-2_000 <= ms < 0 for ms in stamps):
            assert new.skipped + len(got) > 0
    finally:
        engine.dispose()
