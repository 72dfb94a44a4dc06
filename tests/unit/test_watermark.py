"""Promise 1's window logic, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.watermark import (
    DigestMemo,
    OverlapFilter,
    Progress,
    WindowPlanner,
    change_digest,
)
from queuestream.errors import ConfigurationError

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
planner = WindowPlanner(first_window=timedelta(hours=24), overlap=timedelta(seconds=2))


def test_first_refresh_takes_the_last_24_hours() -> None:
    window = planner.plan(Progress(), safe_end=T0)
    assert window.start == T0 - timedelta(hours=24)
    assert window.read_from == window.start
    assert window.end == T0


def test_next_refresh_starts_at_the_watermark_and_rereads_the_overlap() -> None:
    window = planner.plan(Progress(watermark=T0), safe_end=T0 + timedelta(minutes=1))
    assert window.start == T0
    assert window.read_from == T0 - timedelta(seconds=2)
    assert window.end == T0 + timedelta(minutes=1)


def test_since_overrides_once_and_is_a_resync() -> None:
    since = datetime(2017, 1, 1, tzinfo=UTC)
    window = planner.plan(Progress(watermark=T0), safe_end=T0, since=since)
    assert (window.start, window.read_from, window.resync) == (since, since, True)
    after = planner.plan(Progress(watermark=window.end), safe_end=T0 + timedelta(seconds=30))
    assert after.start == window.end
    assert not after.resync


def test_a_since_after_what_the_source_can_be_read_up_to_is_refused() -> None:
    """A future --since (a mistyped year) would set the watermark ahead: nothing published
    until then. It stops with what to do, and so does one a second past the safe bound."""
    for since in (datetime(2099, 1, 1, tzinfo=UTC), T0 + timedelta(seconds=1)):
        with pytest.raises(ConfigurationError, match="give a moment in the past"):
            planner.plan(Progress(watermark=T0 - timedelta(hours=1)), safe_end=T0, since=since)
    window = planner.plan(Progress(), safe_end=T0, since=T0)  # up to the bound: empty, allowed
    assert (window.start, window.end) == (T0, T0)


def test_a_since_after_the_watermark_warns_that_changes_between_are_left_to_a_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watermark = T0 - timedelta(hours=2)
    with caplog.at_level("WARNING", logger="producer.watermark"):
        window = planner.plan(
            Progress(watermark=watermark), safe_end=T0, since=T0 - timedelta(hours=1)
        )
        assert window.start == T0 - timedelta(hours=1)
        assert "a sweep finds them" in caplog.text
        caplog.clear()
        planner.plan(Progress(watermark=watermark), safe_end=T0, since=watermark)
        assert caplog.text == ""


def test_watermark_never_moves_backwards() -> None:
    window = planner.plan(Progress(watermark=T0), safe_end=T0 - timedelta(seconds=30))
    assert window.end == T0


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        planner.plan(Progress(), safe_end=datetime(2026, 1, 1))  # noqa: DTZ001


def test_overlap_is_deduplicated_not_dropped() -> None:
    first = planner.plan(Progress(), safe_end=T0)
    f1 = OverlapFilter.for_window(first, Progress(), timedelta(seconds=2))
    published_late = T0 - timedelta(seconds=1)  # inside the next overlap
    d_published = change_digest("orders", (1,), published_late)
    assert f1.admit(d_published, published_late)
    progress = Progress(watermark=first.end, overlap_seen=Progress.unpack_digests(f1.packed()))

    second = planner.plan(progress, safe_end=T0 + timedelta(seconds=10))
    f2 = OverlapFilter.for_window(second, progress, timedelta(seconds=2))
    # Re-read in the overlap: already published, skipped.
    assert f2.needs_digest(published_late)
    assert not f2.admit(d_published, published_late)
    # A late arrival stamped inside the overlap that nobody published: kept.
    late = T0 - timedelta(seconds=1, microseconds=5)
    assert f2.admit(change_digest("orders", (2,), late), late)
    # A new version of the same row is a different change: kept.
    newer = T0 + timedelta(seconds=1)
    assert f2.admit(change_digest("orders", (1,), newer), newer)
    assert f2.skipped == 1


def test_rows_sharing_the_end_timestamp_wait_for_the_next_window() -> None:
    # The window is half-open [start, end): a row stamped exactly at end is not in it,
    # so it cannot be lost by moving the watermark to end.
    window = planner.plan(Progress(watermark=T0), safe_end=T0 + timedelta(seconds=5))
    stamp = window.end
    assert not (window.read_from <= stamp < window.end)
    nxt = planner.plan(Progress(watermark=window.end), safe_end=stamp + timedelta(seconds=5))
    assert nxt.start <= stamp < nxt.end


# -- the digests kept from one refresh to the next ----------------------------------------

_CHICAGO = ZoneInfo("America/Chicago")
#: Wall times around Chicago's DST changes of 2026: 02:00-03:00 on March 8 does not
#: exist, 01:00-02:00 on November 1 happens twice.
_EDGES = [datetime(2026, 3, 8, 1, 30), datetime(2026, 11, 1, 0, 30)]  # noqa: DTZ001


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(["orders", "order_details"]),
            st.tuples(st.integers(0, 5), st.integers(0, 2)),
            st.sampled_from(_EDGES),
            st.integers(0, 3 * 3600 * 1_000_000).map(lambda us: timedelta(microseconds=us)),
            st.sampled_from([None, _CHICAGO, UTC]),
        ),
        max_size=30,
    ),
    refreshes=st.lists(st.integers(0, 29), max_size=4),
)
def test_a_remembered_digest_is_the_digest_made_again(
    changes: list[tuple[str, tuple[int, int], datetime, timedelta, ZoneInfo | None]],
    refreshes: list[int],
) -> None:
    """Naive stamps in and around the hour that does not exist and the one that happens
    twice, aware ones too, the same change asked again across refreshes: every digest is
    change_digest's."""
    memo = DigestMemo(_CHICAGO, limit=20)
    for number, (table, key, edge, after, zone) in enumerate(changes * 2):
        if number in refreshes:
            memo.next_refresh()
        stamp = edge + after
        if zone is not None:
            stamp = stamp.replace(tzinfo=zone)
        version = stamp if stamp.tzinfo else stamp.replace(tzinfo=_CHICAGO)
        assert memo.digest(table, key, stamp) == change_digest(table, key, version)


def test_a_stamp_of_the_second_hour_is_digested_as_itself() -> None:
    """fold=1 (the repeated hour's second pass) is equal to fold=0 but not the same change."""
    first = datetime(2026, 11, 1, 1, 30)  # noqa: DTZ001
    second = first.replace(fold=1)
    memo = DigestMemo(_CHICAGO)
    assert memo.digest("orders", (1,), first) == change_digest(
        "orders", (1,), first.replace(tzinfo=_CHICAGO)
    )
    assert memo.digest("orders", (1,), second) == change_digest(
        "orders", (1,), second.replace(tzinfo=_CHICAGO)
    )
    assert change_digest("orders", (1,), first.replace(tzinfo=_CHICAGO)) != change_digest(
        "orders", (1,), second.replace(tzinfo=_CHICAGO)
    )


@settings(max_examples=300, deadline=None)
@given(
    table=st.text(max_size=12),
    key=st.tuples(st.integers(), st.integers(-(2**70), 2**70)),
    stamp=st.datetimes(),
    zone=st.sampled_from(
        [
            ZoneInfo("UTC"),
            ZoneInfo("Etc/GMT-14"),
            ZoneInfo("Etc/GMT+5"),
            UTC,
            timezone(timedelta(hours=5, minutes=30, seconds=15, microseconds=7)),
            timezone(-timedelta(hours=3)),
        ]
    ),
    again=st.booleans(),
)
def test_a_new_digest_in_a_zone_of_one_offset_is_change_digests(
    table: str, key: tuple[int, int], stamp: datetime, zone: tzinfo, again: bool
) -> None:
    """The memo makes a new change's digest without the zone where the zone has one offset
    forever: byte for byte change_digest's, at any stamp (microseconds or none, years 1
    to 9999), key and table."""
    memo = DigestMemo(zone)
    expected = change_digest(table, key, stamp.replace(tzinfo=zone))
    assert memo.digest(table, key, stamp) == expected
    if again:
        memo.next_refresh()
    assert memo.digest(table, key, stamp) == expected
