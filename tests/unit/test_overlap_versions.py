"""Which recorded versions the server may match an overlap against (producer.overlap_versions).

The server's answer is asked only for the versions of the last committed refresh (every
digest among them one the filter has seen), and only where it can match them exactly:
naive stamps within the range a double holds to the microsecond, integer keys. The
answer itself is tested against the reading row by row on a real PostgreSQL
(tests/integration/test_overlap_versions.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from producer.overlap_versions import LIMIT, OverlapVersions, TableVersions
from producer.watermark import DIGEST_SIZE
from schemas.avro.wall_time import wall_micros

STAMP = datetime(2026, 12, 6, 9, 0, tzinfo=UTC).replace(tzinfo=None)  # as read: naive


def _digest(n: int) -> bytes:
    return n.to_bytes(DIGEST_SIZE, "big")


def _recorded(zone: str = "UTC") -> OverlapVersions:
    versions = OverlapVersions(ZoneInfo(zone))
    table = versions.recording("payments")
    for n in range(3):
        table.add((n,), STAMP, n, _digest(n))
    versions.next_refresh()
    return versions


def test_the_last_refreshs_versions_are_used_when_the_filter_has_seen_them_all() -> None:
    seen = frozenset(_digest(n) for n in range(5))
    before = _recorded().before("payments", seen)
    assert before is not None and before.keys == [(0,), (1,), (2,)]
    # A table it recorded nothing of: matched against nothing (only an empty overlap passes).
    other = _recorded().before("orders", seen)
    assert other is not None and other.keys == []


def test_versions_of_an_attempt_that_failed_are_not_used() -> None:
    seen = frozenset(_digest(n) for n in (0, 1))  # the committed refresh lacks digest 2
    assert _recorded().before("payments", seen) is None
    # Another table's (none here) may still be: each is tested on its own.
    orders = _recorded().before("orders", seen)
    assert orders is not None and orders.keys == []


def test_no_more_than_the_limit_is_held() -> None:
    versions = OverlapVersions(ZoneInfo("UTC"))
    table = versions.recording("payments")
    for n in range(LIMIT + 1):
        table.add((n,), STAMP, n, _digest(n))
    assert not table.whole
    assert table.keys == [] and table.digests == []
    versions.next_refresh()
    assert versions.before("payments", frozenset()) is None


def test_only_versions_the_server_can_match_exactly_are_sent() -> None:
    seen = frozenset(_digest(n) for n in range(9))
    for key, stamp in [
        (("A-1",), STAMP),  # a key of text
        ((1,), STAMP.replace(tzinfo=UTC)),  # an aware stamp
        ((1,), STAMP.replace(fold=1)),
        ((1,), datetime(1600, 1, 1, tzinfo=UTC).replace(tzinfo=None)),  # beyond a double
    ]:
        for zone in ("UTC", "America/New_York"):
            versions = OverlapVersions(ZoneInfo(zone))
            table = versions.recording("payments")
            table.add((7,), STAMP, wall_micros(STAMP, ZoneInfo(zone)), _digest(7))
            table.add(key, stamp, wall_micros(stamp, ZoneInfo(zone)), _digest(8))
            versions.next_refresh()
            assert versions.before("payments", seen) is None, (key, stamp, zone)


def test_in_a_zone_of_several_offsets_each_stamps_wall_time_is_kept() -> None:
    before = _recorded("America/New_York").before("payments", frozenset(map(_digest, range(3))))
    assert before is not None and before.shift is None
    assert before.walls == [int((STAMP.replace(tzinfo=UTC)).timestamp() * 1_000_000)] * 3
    utc = _recorded("UTC").before("payments", frozenset(map(_digest, range(3))))
    assert utc is not None and utc.shift == 0 and utc.walls == []


#: Key values as a driver might hand them over: integers (of any size, negative too),
#: and the values that are no integers but look close (a bool is an int to Python).
_KEY_VALUES = st.one_of(
    st.integers(),
    st.integers(),
    st.booleans(),
    st.text(alphabet="0123456789-, {}", max_size=4),
    st.floats(allow_nan=False),
    st.none(),
)


@given(
    width=st.integers(1, 2),
    keys=st.lists(st.lists(_KEY_VALUES, min_size=2, max_size=2), max_size=30),
    zone=st.sampled_from(["UTC", "America/New_York"]),
)
def test_the_arrays_sent_are_the_keys_and_versions_and_only_integer_keys_are_sent(
    width: int, keys: list[list[Any]], zone: str
) -> None:
    table = OverlapVersions(ZoneInfo(zone)).recording("order_details")
    for n, key in enumerate(keys):
        table.add(tuple(key[:width]), STAMP, wall_micros(STAMP, ZoneInfo(zone)) + n, _digest(n))
    texts = table.arrays()
    columns = [[key[i] for key in keys] for i in range(width)] if keys else []
    if not all(type(v) is int for column in columns for v in column):
        assert texts is None and not table.matchable()
        return
    assert table.matchable()
    expected = {f"k{i}": "{" + ", ".join(map(str, c)) + "}" for i, c in enumerate(columns)}
    expected["v"] = "{" + ", ".join(map(str, table.versions)) + "}"
    if table.shift is None:
        expected["n"] = "{" + ", ".join(map(str, table.walls)) + "}"
    assert texts == expected
    assert table.arrays() is texts  # made once


def test_arrays_are_made_again_once_more_versions_are_held() -> None:
    table = TableVersions(shift=0)
    table.add((1,), STAMP, 1, _digest(1))
    assert table.arrays() == {"k0": "{1}", "v": "{1}"}
    table.add(("A-2",), STAMP, 2, _digest(2))
    assert table.arrays() is None
    table.drop()
    assert table.arrays() is None


def test_the_arrays_prepared_between_refreshes_are_the_ones_the_next_refresh_sends(
    monkeypatch: Any,
) -> None:
    """A reader process makes them while it waits (prepare_next); the next refresh, asking
    for the same versions, makes nothing and gets what a refresh making them would."""
    versions = OverlapVersions(ZoneInfo("UTC"))
    table = versions.recording("payments")
    for n in range(3):
        table.add((n,), STAMP, n, _digest(n))
    versions.recording("orders").add(("A-1",), STAMP, 0, _digest(9))  # not matchable
    expected = TableVersions(shift=0, keys=list(table.keys), versions=list(table.versions))
    versions.prepare_next()
    made: list[TableVersions] = []
    original = TableVersions._make_arrays

    def making(self: TableVersions) -> dict[str, str] | None:
        made.append(self)
        return original(self)

    monkeypatch.setattr(TableVersions, "_make_arrays", making)
    versions.next_refresh()
    seen = frozenset(_digest(n) for n in (0, 1, 2, 9))
    before = versions.before("payments", seen)
    assert before is not None and before.arrays() == expected.arrays() == {
        "k0": "{0, 1, 2}",
        "v": "{0, 1, 2}",
    }
    assert versions.before("orders", seen) is None
    assert len(made) == 1 and made[0] is expected  # the comparison's own: none for the refresh
