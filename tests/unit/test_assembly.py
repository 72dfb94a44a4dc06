"""Batch assembly: a refresh is applied only when it is whole on the owned partitions."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from consumers.assembly import Assembler, Poison
from consumers.changes import Change
from consumers.markers import EndMarker
from queuestream.errors import DecodeError

_offsets: dict[tuple[str, int], itertools.count[int]] = {}


def _change(
    refresh: str, table: str, partition: int, key: int, offset: int | None = None
) -> Change:
    counter = _offsets.setdefault((table, partition), itertools.count())
    return Change(
        table=table,
        op="u",
        key={"id": key},
        row={"id": key},
        version=1,
        refresh_id=refresh,
        topic=f"x.{table}",
        partition=partition,
        offset=next(counter) if offset is None else offset,
        timestamp_ms=0,
        raw_key=None,
        raw_value=None,
    )


def _end(refresh: str, offset: int, **counts: Any) -> EndMarker:
    partition_counts = {(k.split("_p")[0], int(k.split("_p")[1])): v for k, v in counts.items()}
    return EndMarker(
        refresh,
        "watermark",
        event_count=sum(counts.values()),
        offset=offset,
        partition_counts=partition_counts,
    )


OWNED = {("orders", 0), ("order_details", 0)}


def setup_function() -> None:
    _offsets.clear()


def test_waits_for_the_end_marker_and_for_every_counted_event() -> None:
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1))
    assert assembler.ready({}, OWNED, set()) is None  # no END yet
    ends = {"r1": _end("r1", 5, orders_p0=1, order_details_p0=2, order_details_p1=7)}
    assert assembler.ready(ends, OWNED, set()) is None  # lines still missing
    assembler.add(_change("r1", "order_details", 0, 1))
    assert assembler.ready(ends, OWNED, set()) is None
    assembler.add(_change("r1", "order_details", 0, 2))
    batch = assembler.ready(ends, OWNED, set())  # partition 1 is not ours: not awaited
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1"]
    tables = batch.tables(batch.refreshes[0][1])
    assert list(tables) == ["orders", "order_details"]  # foreign-key order
    assembler.done(batch)
    assert assembler.empty


def test_refreshes_apply_in_commit_order_and_never_past_an_incomplete_one() -> None:
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1))
    assembler.add(_change("r2", "orders", 0, 2))
    ends = {
        "r1": _end("r1", 10, orders_p0=1, order_details_p0=1),
        "r2": _end("r2", 20, orders_p0=1),
    }
    # r1 misses a line: r2 (complete) must wait behind it.
    assert assembler.ready(ends, OWNED, set()) is None
    assembler.add(_change("r1", "order_details", 0, 1))
    batch = assembler.ready(ends, OWNED, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1", "r2"]


def test_a_partition_that_moved_on_has_nothing_more_of_a_refresh() -> None:
    # A replay that starts in the middle of r1: r1's first events are not re-read.
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1, offset=7))
    assembler.add(_change("r2", "orders", 0, 2, offset=9))
    ends = {"r1": _end("r1", 10, orders_p0=3), "r2": _end("r2", 20, orders_p0=1)}
    batch = assembler.ready(ends, {("orders", 0)}, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1", "r2"]


def test_a_quiet_partition_whose_last_marker_was_forgotten_still_waits() -> None:
    # orders[0] last saw r1, long ago; r1's END was pruned from memory since. r5 counts an
    # event on orders[0] that has not arrived yet: r5 must wait for it.
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1, offset=3))
    first = assembler.ready({"r1": _end("r1", 1, orders_p0=1)}, {("orders", 0)}, set())
    assert first is not None
    assembler.done(first)
    assembler.add(_change("r5", "order_details", 0, 1, offset=40))
    ends = {"r5": _end("r5", 50, orders_p0=1, order_details_p0=1)}
    assert assembler.ready(ends, OWNED, set()) is None
    assembler.add(_change("r5", "orders", 0, 2, offset=4))
    batch = assembler.ready(ends, OWNED, set())
    assert batch is not None and [r for r, _ in batch.refreshes] == ["r5"]


def test_revoked_partitions_are_forgotten() -> None:
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1))
    assembler.add(_change("r1", "orders", 1, 2))
    assembler.revoke({("orders", 1)})
    ends = {"r1": _end("r1", 1, orders_p0=1, orders_p1=1)}
    batch = assembler.ready(ends, {("orders", 0)}, set())
    assert batch is not None
    assert list(batch.refreshes[0][1]) == [("orders", 0)]


def _poison(partition: int, offset: int) -> Poison:
    error = DecodeError("not Avro", table="orders", raw=b"junk")
    return Poison("x.orders", partition, offset, 0, None, b"junk", error)


def test_undecodable_messages_ride_with_the_batch_that_passes_them() -> None:
    assembler = Assembler()
    assembler.add_poison(_poison(0, 3))
    assembler.add(_change("r1", "orders", 0, 1, offset=5))
    batch = assembler.ready({"r1": _end("r1", 1, orders_p0=1)}, {("orders", 0)}, set())
    assert batch is not None
    assert [p.offset for p in batch.poison] == [3]
    assembler.done(batch)
    assert assembler.empty


def test_undecodable_messages_alone_wait_for_the_end_of_their_partition() -> None:
    assembler = Assembler()
    assembler.add_poison(_poison(0, 3))
    assert assembler.ready({}, {("orders", 0)}, set()) is None
    batch = assembler.ready({}, {("orders", 0)}, {("orders", 0)})
    assert batch is not None
    assert batch.refreshes == []
    assert [p.offset for p in batch.poison] == [3]


def test_batches_stop_growing_at_the_size_limit_but_keep_a_refresh_whole() -> None:
    assembler = Assembler(max_batch_events=3)
    for i in range(4):
        assembler.add(_change("r1", "orders", 0, i))
    assembler.add(_change("r2", "orders", 0, 9))
    ends = {"r1": _end("r1", 1, orders_p0=4), "r2": _end("r2", 2, orders_p0=1)}
    batch = assembler.ready(ends, {("orders", 0)}, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1"]
    assert batch.events == 4


def test_a_partition_read_back_from_the_target_counts_as_done_up_to_its_refresh() -> None:
    # We took over orders:0 where another member had applied r1 already; we read only
    # its last applied event back. r1 is still held for our other partition.
    assembler = Assembler()
    assembler.add(_change("r1", "order_details", 0, 1))
    ends = {"r1": _end("r1", 10, orders_p0=2, order_details_p0=1)}
    assert assembler.ready(ends, OWNED, set()) is None  # orders:0 looks incomplete
    assembler.applied_through(("orders", 0), "r1")
    batch = assembler.ready(ends, OWNED, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1"]


def test_a_refresh_whose_end_is_not_known_yet_holds_back_later_ones_on_its_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # r1's END is not in memory (the marker reader looked back for it, or a long history
    # holds more markers than are kept); r2's is. r2 is whole, but applying it first
    # would store offsets past r1's events on orders[0]: r1 would be skipped as applied.
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1, offset=0))
    assembler.add(_change("r1", "orders", 0, 2, offset=1))
    assembler.add(_change("r2", "orders", 0, 1, offset=2))
    assembler.add(_change("r3", "orders", 1, 3, offset=0))  # a partition r1 does not touch
    ends = {"r2": _end("r2", 20, orders_p0=1), "r3": _end("r3", 30, orders_p1=1)}
    owned = {("orders", 0), ("orders", 1)}
    assert assembler.ready(ends, owned, set()) is None  # r2 waits, and r3 behind it
    assert not caplog.text  # waiting for a marker is no error
    ends["r1"] = _end("r1", 10, orders_p0=2)
    batch = assembler.ready(ends, owned, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r1", "r2", "r3"]


def test_a_refresh_on_partitions_of_its_own_does_not_wait_for_an_unknown_end() -> None:
    assembler = Assembler()
    assembler.add(_change("r1", "orders", 0, 1, offset=0))
    assembler.add(_change("r2", "orders", 1, 2, offset=0))
    ends = {"r2": _end("r2", 20, orders_p1=1)}
    batch = assembler.ready(ends, {("orders", 0), ("orders", 1)}, set())
    assert batch is not None
    assert [r for r, _ in batch.refreshes] == ["r2"]


def test_two_producers_writing_at_once_stop_the_consumer_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # b's events come before and after a's on orders[0], and a committed first: no
    # order of the two applies them without storing an offset past the other's events.
    assembler = Assembler()
    for refresh, offset in (("b", 5), ("a", 10), ("b", 12), ("a", 13)):
        assembler.add(_change(refresh, "orders", 0, offset, offset=offset))
    ends = {"a": _end("a", 1, orders_p0=2), "b": _end("b", 2, orders_p0=2)}
    assert assembler.ready(ends, {("orders", 0)}, set()) is None
    assert "two producers write these topics at once" in caplog.text
