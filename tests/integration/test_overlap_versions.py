"""PostgreSQL's answer for the overlap decides every row as reading it row by row does.

``producer.window_rows`` asks PostgreSQL whether every row of a refresh's overlap is a
version the last refresh recorded (``producer.overlap_versions``) and, when it is,
decides the overlap without reading it. The reference is the reading row by row (its
keys and versions, each tested by the overlap filter). On a chain of refreshes over
random writes (new rows, rows changed again, rows committed late into the overlap,
rows deleted, a row rewritten with its own stamp, an attempt that failed half-way),
by a writer whose clock kept standard time, in UTC and across both of New York's
changes of clock, both publish the same rows in the same order,
record the same digests for the next refresh and count the same rows skipped; and the
server's answer decided some overlaps that held rows, so the test reaches it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from producer.overlap_versions import OverlapMatch
from producer.source_reader import FrozenSnapshot, SourceReader
from producer.watermark import DigestMemo, OverlapFilter, Progress, WindowPlanner
from producer.window_rows import window_rows
from queuestream.databases import create_engine
from queuestream.settings import load_settings
from queuestream.sync_schema import Base, create_source_schema, to_source_local
from queuestream.tables import TABLES_BY_NAME, TableSpec

OVERLAP = timedelta(seconds=2)
PAYMENTS = Base.metadata.tables["Payments"]
LINES = Base.metadata.tables["OrderDetails"]
SPECS = [TABLES_BY_NAME["payments"], TABLES_BY_NAME["order_details"]]
#: New York's standard time: a writer whose clock did not spring forward stamps its rows
#: with wall times the zone skips (02:30 on the day clocks go from 02:00 to 03:00).
_STANDARD = timezone(timedelta(hours=-5))


def _payment(key: tuple[int, ...], stamp: datetime, amount: int) -> dict[str, Any]:
    return {
        "PaymentID": key[0],
        "CustomerID": key[0] % 7,
        "OrderID": key[0],
        "PaymentTypeID": 1,
        "PaymentDate": stamp,
        "Amount": Decimal(amount),
        "CurrencyCode": "usd",
        "AuthorizationCode": None,
        "Memo": None,
        "CreatedDate": stamp,
        "ModifiedDate": stamp,
    }


def _line(key: tuple[int, ...], stamp: datetime, amount: int) -> dict[str, Any]:
    return {
        "OrderID": key[0],
        "OrderLine": key[1],
        "ItemCode": "SKU",
        "ItemDescription": None,
        "Quantity": Decimal(1),
        "PriceEach": Decimal(amount),
        "PriceTotal": Decimal(amount),
        "Tax": Decimal(0),
        "WeightEach": None,
        "CreatedDate": stamp,
        "ModifiedDate": stamp,
    }


class _Source:
    """The two tables' rows as the test wrote them: key -> source-local stamp."""

    def __init__(self, engine: sa.Engine, zone: ZoneInfo, rng: random.Random) -> None:
        self.engine, self.zone, self.rng = engine, zone, rng
        self.rows: dict[str, dict[tuple[int, ...], datetime]] = {s.name: {} for s in SPECS}
        self._next = 1

    def _key(self, spec: TableSpec) -> tuple[int, ...]:
        self._next += 1
        return (self._next,) if spec.name == "payments" else (self._next // 3, self._next % 3)

    def write(
        self, spec: TableSpec, key: tuple[int, ...], moment: datetime, *, stale: bool = False
    ) -> None:
        """``stale``: by a writer whose clock kept standard time (New York's, UTC-5)."""
        table, make = (PAYMENTS, _payment) if spec.name == "payments" else (LINES, _line)
        if stale:
            stamp = moment.astimezone(_STANDARD).replace(tzinfo=None)
        else:
            stamp = to_source_local(moment, self.zone)
        row = make(key, stamp, self.rng.randint(1, 999))
        with self.engine.begin() as conn:
            if key in self.rows[spec.name]:
                where = [table.c[k] == v for k, v in zip(spec.key, key, strict=True)]
                conn.execute(sa.update(table).where(*where).values(row))
            else:
                conn.execute(sa.insert(table), [row])
        self.rows[spec.name][key] = stamp

    def delete(self, spec: TableSpec, key: tuple[int, ...]) -> None:
        table = PAYMENTS if spec.name == "payments" else LINES
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(table).where(
                    *[table.c[k] == v for k, v in zip(spec.key, key, strict=True)]
                )
            )
        del self.rows[spec.name][key]

    def changes(self, low: datetime, start: datetime, end: datetime, *, only_new: bool) -> None:
        """Random writes for a refresh of [start, end) whose overlap begins at ``low``;
        ``only_new``: new rows and rows changed again, stamped in the window, and nothing
        else."""
        rng = self.rng

        def moment(a: datetime, b: datetime) -> datetime:
            return a + (b - a) * rng.random()

        for spec in SPECS:
            known = self.rows[spec.name]
            for _ in range(rng.randint(0, 12)):  # new rows, and rows changed again
                key = rng.choice(list(known)) if known and rng.random() < 0.4 else self._key(spec)
                self.write(spec, key, moment(start, end))
            if only_new:
                continue
            if rng.random() < 0.35:  # committed late: stamped in the overlap
                key = rng.choice(list(known)) if known and rng.random() < 0.5 else self._key(spec)
                self.write(spec, key, moment(low, start))
            if self.zone.key == "America/New_York" and rng.random() < 0.3:
                # Its stamps run up to half an hour ahead of the window: in the skipped
                # hour they are read early, and held by the filter as after the window.
                later = end + timedelta(minutes=30)
                self.write(spec, self._key(spec), moment(start, later), stale=True)
            if known and rng.random() < 0.2:
                self.delete(spec, rng.choice(list(known)))
            if known and rng.random() < 0.15:  # rewritten with the stamp it had
                key = rng.choice(list(known))
                table = PAYMENTS if spec.name == "payments" else LINES
                where = [table.c[k] == v for k, v in zip(spec.key, key, strict=True)]
                with self.engine.begin() as conn:
                    earlier = known[key] - timedelta(days=1)
                    conn.execute(sa.update(table).where(*where).values(CreatedDate=earlier))


class _RowByRow:
    """A snapshot without the server's answer: the overlap read row by row (the reference)."""

    def __init__(self, snapshot: FrozenSnapshot) -> None:
        self._snapshot = snapshot

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snapshot, name)

    def overlap_matches(self, *_args: object) -> None:
        return None


class _Noting:
    """A snapshot that keeps the server's answers."""

    def __init__(self, snapshot: FrozenSnapshot, answers: list[OverlapMatch]) -> None:
        self._snapshot, self._answers = snapshot, answers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snapshot, name)

    def overlap_matches(self, *args: Any) -> OverlapMatch | None:
        answer = self._snapshot.overlap_matches(*args)
        if answer is not None:
            self._answers.append(answer)
        return answer


def _published(rows: Iterator[Any], spec: TableSpec) -> list[tuple[str, tuple[Any, ...]]]:
    return [(spec.name, tuple(c.row[k] for k in spec.key)) for c in rows]


@pytest.mark.parametrize(
    ("zone_name", "base"),
    [
        ("UTC", datetime(2026, 12, 5, 10, 0, tzinfo=UTC)),
        # 01:59:40 EDT: the windows cross 02:00, when New York's clocks go back to 01:00.
        ("America/New_York", datetime(2026, 11, 1, 5, 59, 40, tzinfo=UTC)),
        # 01:59:40 EST: the windows cross 02:00, when New York's clocks go on to 03:00.
        ("America/New_York", datetime(2026, 3, 8, 6, 59, 40, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_the_servers_answer_decides_the_overlap_as_reading_it_row_by_row(
    postgres_url: str, zone_name: str, base: datetime, seed: int
) -> None:
    zone = ZoneInfo(zone_name)
    rng = random.Random(seed)
    engine = create_engine(postgres_url, writer=True)
    answers: list[OverlapMatch] = []
    try:
        create_source_schema(engine)
        source = _Source(engine, zone, rng)
        reader = SourceReader(
            engine, load_settings(None, source_url=postgres_url, source_timezone=zone_name)
        )
        planner = WindowPlanner(timedelta(seconds=3), OVERLAP)
        progress = Progress()
        reference_memo, memo = DigestMemo(zone), DigestMemo(zone)
        end = base
        for refresh in range(14):
            end += timedelta(seconds=rng.uniform(0.3, 3.2))
            window = planner.plan(progress, end)
            source.changes(window.read_from, window.start, window.end, only_new=False)
            with reader.frozen() as snapshot:
                reference_memo.next_refresh()
                memo.next_refresh()
                if rng.random() < 0.2:  # an attempt that failed after its first table
                    failed = OverlapFilter.for_window(window, progress, OVERLAP)
                    list(window_rows(snapshot, SPECS[0], window, failed, zone, memo))
                    memo.next_refresh()
                expected, got = [], []
                reference = OverlapFilter.for_window(window, progress, OVERLAP)
                answered = OverlapFilter.for_window(window, progress, OVERLAP)
                for spec in SPECS:
                    expected += _published(
                        window_rows(
                            _RowByRow(snapshot),  # type: ignore[arg-type]
                            spec,
                            window,
                            reference,
                            zone,
                            reference_memo,
                        ),
                        spec,
                    )
                    got += _published(
                        window_rows(
                            _Noting(snapshot, answers),  # type: ignore[arg-type]
                            spec,
                            window,
                            answered,
                            zone,
                            memo,
                        ),
                        spec,
                    )
            assert got == expected, f"refresh {refresh}"
            assert answered.packed() == reference.packed(), f"refresh {refresh}"
            assert answered.skipped == reference.skipped, f"refresh {refresh}"
            progress = Progress(
                refresh_id=str(refresh),
                watermark=window.end,
                overlap_seen=frozenset(reference.recorded),
            )
    finally:
        engine.dispose()
    decided = [a for a in answers if a.all_skipped and a.matched > 0]
    assert decided, "the server's answer never decided an overlap that held rows"
    assert any(not a.all_skipped for a in answers), "no overlap held a late row"


def test_without_late_rows_the_server_decides_every_overlap(postgres_url: str) -> None:
    """Refresh after refresh with no row committed late, every overlap after the first
    is decided by the server: what it skipped at or after ``keep_from`` is recorded with
    its key and stamp again, for the next."""
    zone = ZoneInfo("UTC")
    rng = random.Random(7)
    engine = create_engine(postgres_url, writer=True)
    answers: list[OverlapMatch] = []
    try:
        create_source_schema(engine)
        source = _Source(engine, zone, rng)
        reader = SourceReader(engine, load_settings(None, source_url=postgres_url))
        planner = WindowPlanner(timedelta(seconds=3), OVERLAP)
        progress, memo = Progress(), DigestMemo(zone)
        end = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
        for refresh in range(10):
            end += timedelta(seconds=rng.uniform(0.5, 1.5))  # the overlap: 2 s, two windows
            window = planner.plan(progress, end)
            source.changes(window.read_from, window.start, window.end, only_new=True)
            overlap = OverlapFilter.for_window(window, progress, OVERLAP)
            with reader.frozen() as snapshot:
                memo.next_refresh()
                for spec in SPECS:
                    list(window_rows(_Noting(snapshot, answers), spec, window, overlap, zone, memo))  # type: ignore[arg-type]
            progress = Progress(str(refresh), window.end, frozenset(overlap.recorded))
    finally:
        engine.dispose()
    held = [a for a in answers[len(SPECS) :] if a.rows]
    assert len(held) >= 10
    assert all(a.all_skipped for a in held), [a for a in held if not a.all_skipped]
