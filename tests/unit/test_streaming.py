"""A refresh applied in parts inside one open transaction (consumers.streaming), on SQLite.

No Kafka: the assembler is fed by hand and a stand-in consumer records which
partitions were paused. What must hold: parts written before the refresh is whole
stay invisible until one commit stores rows, offsets and one sync-log entry per
refresh; a rollback leaves nothing; a partition that reaches a later refresh waits;
dead letters go out only with the commit, within the error budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from consumers.assembly import Assembler, Tombstone
from consumers.dead_letters import DeadLetter, ErrorBudgetExceededError
from consumers.markers import EndMarker
from consumers.ownership import Ownership
from consumers.runtime import _prefetch
from consumers.streaming import Streaming
from queuestream.errors import DecodeError
from queuestream.kafka_clients import consumer_config
from queuestream.settings import load_settings
from tests.accounting_rig import TOPIC, AccountingRig, customer_change

OWNED = {("customers", 0), ("customers", 1)}


class _Consumer:
    """Stands in for the Kafka consumer: remembers the partitions paused."""

    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()

    def subscribe(self, *_: Any, **__: Any) -> None:
        return None

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}


class _Rig(AccountingRig):
    """The rig, with an assembler, an ownership of two partitions and a Streaming."""

    def __init__(self, tmp_path: Path, max_errors: int = 0) -> None:
        super().__init__(tmp_path, max_errors)
        self.consumer = _Consumer()
        self.ownership = Ownership({TOPIC: "customers"}, self.engine, self.applier.offsets)
        self.ownership.join(self.consumer)  # type: ignore[arg-type]
        self.ownership.owned = set(OWNED)
        self.assembler = Assembler()
        self.streaming = Streaming(self.assembler, self.ownership, self.applier, open_at=4, part=3)

    def customer(self, cid: int, partition: int, offset: int, refresh: str = "r1") -> None:
        self.assembler.add(customer_change(cid, offset, refresh=refresh, partition=partition))

    def ids(self) -> set[int]:
        return set(self.accounts())

    def close(self) -> None:
        self.streaming.abandon()
        super().close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[_Rig]:
    made = _Rig(tmp_path)
    yield made
    made.close()


def _end(refresh: str, offset: int, p0: int, p1: int) -> EndMarker:
    return EndMarker(
        refresh,
        "watermark",
        event_count=p0 + p1,
        offset=offset,
        partition_counts={("customers", 0): p0, ("customers", 1): p1},
    )


def test_parts_stay_invisible_until_the_refresh_is_whole_then_commit_once(rig: _Rig) -> None:
    ends = {"r1": _end("r1", 10, p0=6, p1=4)}
    for i in range(5):
        rig.customer(i, 0, i)
    assert rig.assembler.ready(ends, OWNED, set()) is None
    assert rig.streaming.wanted(ends)
    rig.streaming.start(ends)
    assert rig.streaming.turn(ends) is None
    assert rig.assembler.held_sizes() == {"r1": 0}  # written in the open transaction
    assert rig.ids() == set() and rig.stored() == {}  # and not visible
    rig.customer(5, 0, 5)
    for i in range(4):
        rig.customer(10 + i, 1, i)
    done = rig.streaming.turn(ends)
    assert done is not None
    applied, batch = done
    rig.assembler.done(batch)
    assert rig.assembler.empty and not rig.streaming.active
    assert rig.ids() == {0, 1, 2, 3, 4, 5, 10, 11, 12, 13}
    assert rig.stored() == {(TOPIC, 0): 6, (TOPIC, 1): 4} == applied.next_offsets
    (entry,) = rig.log()  # one sync-log entry for the refresh, its parts added up
    assert (entry["refresh_id"], entry["rows_applied"]) == ("r1", 10)
    assert entry["offsets"] == {TOPIC: {"0": [0, 5], "1": [0, 3]}}


def test_a_rolled_back_transaction_leaves_nothing(rig: _Rig) -> None:
    ends = {"r1": _end("r1", 10, p0=6, p1=4)}
    for i in range(5):
        rig.customer(i, 0, i)
    rig.streaming.start(ends)
    rig.streaming.turn(ends)
    rig.streaming.abandon()
    assert not rig.streaming.active
    assert rig.ids() == set() and rig.stored() == {} and rig.log() == []


def test_a_partition_that_reaches_a_later_refresh_waits_for_the_commit(rig: _Rig) -> None:
    ends = {"r1": _end("r1", 10, p0=5, p1=2), "r2": _end("r2", 20, p0=9, p1=0)}
    for i in range(5):
        rig.customer(i, 0, i)
    rig.streaming.start({"r1": ends["r1"]})  # the horizon: r1
    rig.customer(100, 0, 5, refresh="r2")  # partition 0 moves on to r2
    assert rig.streaming.turn(ends) is None
    assert rig.consumer.paused == {(TOPIC, 0)}
    rig.customer(10, 1, 0)
    rig.customer(11, 1, 1)
    done = rig.streaming.turn(ends)
    assert done is not None
    rig.assembler.done(done[1])
    assert rig.consumer.paused == set()  # resumed with the commit
    assert rig.ids() == {0, 1, 2, 3, 4, 10, 11}  # r2 (not whole) is still held
    assert rig.assembler.held_sizes() == {"r2": 1}
    assert rig.stored() == {(TOPIC, 0): 5, (TOPIC, 1): 2}


def test_a_later_refresh_whose_end_is_unknown_waits_too(rig: _Rig) -> None:
    ends = {"r1": _end("r1", 10, p0=6, p1=0)}
    for i in range(5):
        rig.customer(i, 0, i)
    rig.streaming.start(ends)
    rig.customer(100, 1, 0, refresh="r2")  # ids start with the start time: r2 is later
    assert rig.streaming.turn(ends) is None
    assert rig.consumer.paused == {(TOPIC, 1)}


def test_dead_letters_leave_with_the_commit_only(tmp_path: Path) -> None:
    rig = _Rig(tmp_path, max_errors=1)
    rig.refuse(3)
    ends = {"r1": _end("r1", 10, p0=5, p1=1)}
    for i in range(5):
        rig.customer(i, 0, i)
    rig.streaming.start(ends)
    rig.streaming.turn(ends)  # the part is refused as a whole, then found event by event
    assert rig.letters == []
    rig.customer(10, 1, 0)
    done = rig.streaming.turn(ends)
    assert done is not None
    (letter,) = rig.letters
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 0, 3)
    assert "CustomerID" in letter.describe() and "3" in letter.describe()
    assert rig.ids() == {0, 1, 2, 4, 10}
    (entry,) = rig.log()
    assert entry["errors"] == 1
    rig.close()


def test_over_the_error_budget_a_part_stops_the_transaction(tmp_path: Path) -> None:
    rig = _Rig(tmp_path, max_errors=0)
    rig.refuse(3)
    ends = {"r1": _end("r1", 10, p0=5, p1=1)}
    for i in range(5):
        rig.customer(i, 0, i)
    rig.streaming.start(ends)
    with pytest.raises(ErrorBudgetExceededError):
        rig.streaming.turn(ends)
    rig.streaming.abandon()
    assert rig.letters == [] and rig.ids() == set() and rig.stored() == {}
    rig.close()


def test_poison_among_the_parts_and_tombstones_after_them_move_the_offsets(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path, max_errors=1)
    ends = {"r1": _end("r1", 10, p0=5, p1=1), "r2": _end("r2", 20, p0=9, p1=0)}
    error = DecodeError("not an Avro record", table="customers", raw=b"\x00")
    for offset in (0, 1, 3, 4):
        rig.customer(offset, 0, offset)
    rig.assembler.add_poison(DeadLetter(TOPIC, 0, 2, 0, b"k", b"\x00", error))
    rig.streaming.start(ends)
    rig.streaming.turn(ends)  # p0's four events are written
    rig.assembler.add_tombstone(Tombstone("customers", TOPIC, 0, 5))  # follows them
    rig.assembler.add_poison(DeadLetter(TOPIC, 0, 6, 0, b"k", b"\x00", error))
    rig.customer(11, 0, 7, refresh="r2")  # p0 goes on to r2 (not whole)
    rig.customer(10, 1, 0)
    done = rig.streaming.turn(ends)
    assert done is not None
    rig.assembler.done(done[1])
    # The poison among r1's events rides with it; the tombstone after them is consumed;
    # the poison after them waits for the batch of r2 (the next events of p0).
    assert [(letter.partition, letter.offset) for letter in rig.letters] == [(0, 2)]
    assert rig.stored() == {(TOPIC, 0): 6, (TOPIC, 1): 1}
    assert rig.assembler.held_sizes() == {"r2": 1}
    (entry,) = rig.log()
    assert (entry["refresh_id"], entry["errors"]) == ("r1", 1)
    rig.close()


def test_the_read_ahead_is_bounded_unless_the_kafka_options_say_otherwise() -> None:
    # Fetches of 32 MB of lz4 batches made a consumer fetch a whole refresh ahead: its
    # memory grew with the refresh (make bench-memory). Queue and fetches stay small.
    assert _prefetch(load_settings()) == {
        "queued.max.messages.kbytes": 4_096,
        "fetch.max.bytes": 4 * 1024 * 1024,
        "max.partition.fetch.bytes": 1024 * 1024,
    }
    chosen = load_settings(kafka={"queued.max.messages.kbytes": "65536"})
    # the user's value reaches librdkafka untouched; the other bounds stay
    assert "queued.max.messages.kbytes" not in _prefetch(chosen)
    assert _prefetch(chosen)["fetch.max.bytes"] == 4 * 1024 * 1024
    every = {k: "33554432" for k in _prefetch(load_settings())}
    assert _prefetch(load_settings(kafka=every)) == {}


def test_the_change_consumer_gets_the_bounded_read_ahead() -> None:
    """The bounds override consumer_config's fetch sizes (sized for END markers)."""
    settings = load_settings()
    config = consumer_config(settings, "g", **_prefetch(settings))
    assert config["fetch.max.bytes"] == 4 * 1024 * 1024
    assert config["max.partition.fetch.bytes"] == 1024 * 1024
    assert config["queued.max.messages.kbytes"] == 4_096
    chosen = load_settings(kafka={"fetch.max.bytes": "8388608"})
    assert consumer_config(chosen, "g", **_prefetch(chosen))["fetch.max.bytes"] == "8388608"
