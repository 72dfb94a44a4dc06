"""The batches contract: markers through the codec, and the reader on a stand-in consumer.

No Kafka here: the reader is handed a consumer that serves a list of messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, TopicPartition

from consumers.markers import EndMarkers
from queuestream.batches import (
    BatchesReader,
    BeginMarker,
    EndMarker,
    decode_batch_key,
    decode_marker,
    encode_batch_key,
    encode_marker,
)
from queuestream.batches import reader as reader_module
from queuestream.batches.reader import _STEP
from queuestream.errors import BrokerUnavailableError, DecodeError
from queuestream.settings import load_settings
from schemas.avro import AvroCodec

codec = AvroCodec("exigo")
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
END = START + timedelta(seconds=3)
TOPIC = "exigo.batches"


def _begin(refresh_id: str = "r1", **fields: Any) -> BeginMarker:
    return BeginMarker(refresh_id, "watermark", START, END, ts_ms=1_000, **fields)


def _end(refresh_id: str = "r1", **fields: Any) -> EndMarker:
    return _begin(refresh_id).end(
        counts={"orders": 3, "order_details": 5},
        op_counts={"orders.c": 2, "orders.u": 1, "order_details.c": 5},
        partition_counts={("orders", 0): 2, ("orders", 1): 1, ("order_details", 1): 5},
        **fields,
    )


# --- markers through the codec ---------------------------------------------------------


def test_begin_round_trip() -> None:
    begin = _begin(since_override=START - timedelta(days=1))
    assert decode_marker(codec, encode_marker(codec, begin)) == begin


def test_end_round_trip_keys_partition_counts_by_table_and_partition() -> None:
    end = _end(snapshot_fingerprint="abc", overlap_seen=b"\x01" * 16)
    data = encode_marker(codec, end)
    decoded = decode_marker(codec, data)
    assert isinstance(decoded, EndMarker)
    assert decoded.partition_counts == {("orders", 0): 2, ("orders", 1): 1, ("order_details", 1): 5}
    assert decoded == end
    # On the wire the keys are "<table>:<partition>" strings (batches.value.avsc).
    record = codec.decode("batches", "value", data)
    assert record is not None
    assert record["partition_counts"] == {"orders:0": 2, "orders:1": 1, "order_details:1": 5}
    assert record["status"] == "END" and record["event_count"] == 8


def test_encoding_is_the_released_wire_format() -> None:
    """The bytes are those of the record as the producer built it by hand before."""
    end = _end(overlap_seen=b"\x02" * 8)
    by_hand = {
        "status": "END",
        "refresh_id": "r1",
        "ts_ms": end.ts_ms,
        "mode": "watermark",
        "window_start": START,
        "window_end": END,
        "since_override": None,
        "event_count": 8,
        "counts": {"orders": 3, "order_details": 5},
        "op_counts": {"orders.c": 2, "orders.u": 1, "order_details.c": 5},
        "partition_counts": {"orders:0": 2, "orders:1": 1, "order_details:1": 5},
        "snapshot_fingerprint": None,
        "overlap_seen": b"\x02" * 8,
    }
    assert encode_marker(codec, end) == codec.encode("batches", "value", by_hand)
    begin = dict(by_hand, status="BEGIN", ts_ms=1_000, event_count=0, overlap_seen=None)
    begin |= {"counts": {}, "op_counts": {}, "partition_counts": {}}
    assert encode_marker(codec, _begin()) == codec.encode("batches", "value", begin)


def test_end_closes_its_begin() -> None:
    begin = BeginMarker("r9", "procedure", since_override=START)
    end = begin.end(
        counts={"orders": 2}, op_counts={}, partition_counts={}, snapshot_fingerprint="f"
    )
    assert (end.refresh_id, end.mode, end.since_override) == ("r9", "procedure", START)
    assert end.event_count == 2 and end.snapshot_fingerprint == "f"
    assert end.ts_ms >= begin.ts_ms


def test_expected_counts_per_partition() -> None:
    end = _end()
    assert end.expected("orders", 1) == 1
    assert end.expected("payments", 0) == 0  # nothing there
    old = EndMarker("r0", "watermark", event_count=4)  # a producer that did not count them
    assert old.expected("orders", 0) is None
    assert EndMarker("r0", "watermark").expected("orders", 0) == 0  # an empty refresh


def test_a_partition_count_key_that_is_not_table_colon_partition_is_a_decode_error() -> None:
    record = _end().to_record() | {"partition_counts": {"orders-0": 2}}
    data = codec.encode("batches", "value", record)
    with pytest.raises(DecodeError, match="orders-0") as caught:
        decode_marker(codec, data)
    assert caught.value.raw == data and caught.value.column == "partition_counts"


def test_key_round_trip() -> None:
    assert decode_batch_key(codec, encode_batch_key(codec, "queuestream-exigo")) == (
        "queuestream-exigo"
    )
    assert decode_batch_key(codec, None) is None
    assert decode_marker(codec, None) is None


# --- the reader, on a stand-in consumer ---------------------------------------------------


class _Error:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return f"error {self._code}"


class _Message:
    def __init__(
        self, offset: int, key: bytes | None, value: bytes | None, ts: int, error: Any = None
    ) -> None:
        self._offset, self._key, self._value, self._ts, self._error = offset, key, value, ts, error

    def error(self) -> Any:
        return self._error

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class _Consumer:
    """One partition: ``log[offset]`` is a message, or None for a commit marker."""

    def __init__(self, log: list[_Message | None]) -> None:
        self.log = log
        self.next: int | None = None  # None: not assigned
        self.eof_told = False
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> None:
        return None  # metadata: nothing to learn here

    def assign(self, partitions: list[TopicPartition]) -> None:
        [tp] = partitions
        offset = tp.offset
        self.next = (
            0 if offset == OFFSET_BEGINNING else len(self.log) if offset == OFFSET_END else offset
        )
        self.eof_told = False

    def _take(self) -> _Message | None:
        if self.next is None:
            return None
        while self.next < len(self.log):
            message = self.log[self.next]
            self.next += 1
            if message is not None:
                self.eof_told = False
                return message
        if self.eof_told:
            return None
        self.eof_told = True
        return _Message(self.next, None, None, 0, _Error(KafkaError._PARTITION_EOF))

    def poll(self, timeout: float) -> _Message | None:
        return self._take()

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        found: list[_Message] = []
        while len(found) < num_messages and (message := self._take()) is not None:
            found.append(message)
        return found

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        assert self.next is not None, "position() of an unassigned consumer"
        return [TopicPartition(TOPIC, 0, self.next)]

    #: Look-ups that answer the partition's error first (a leader not known yet).
    lookup_errors = 0
    #: Look-ups that answer -1 with no error first (the partition not stable yet).
    lookup_unstable = 0

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> Any:
        [tp] = partitions
        if self.lookup_errors:
            self.lookup_errors -= 1
            # librdkafka's answer: offset -1 and the partition's error (TopicPartition's
            # error cannot be set from Python)
            return [SimpleNamespace(offset=-1, error=KafkaError(KafkaError.LEADER_NOT_AVAILABLE))]
        if self.lookup_unstable:
            self.lookup_unstable -= 1
            return [TopicPartition(TOPIC, 0, -1)]
        offset = next(
            (i for i, m in enumerate(self.log) if m is not None and m._ts >= tp.offset), -1
        )
        return [TopicPartition(TOPIC, 0, offset)]

    def close(self) -> None:
        self.closed = True


def _refresh(log: list[_Message | None], refresh_id: str, producer: str = "p1") -> None:
    """BEGIN, END and a commit marker, as a refresh leaves them in the batches topic."""
    key = encode_batch_key(codec, producer)
    ts = 1_000 * (len(log) + 1)
    log.append(_Message(len(log), key, encode_marker(codec, _begin(refresh_id)), ts))
    log.append(_Message(len(log), key, encode_marker(codec, _end(refresh_id)), ts + 1))
    log.append(None)


def _reader(log: list[_Message | None]) -> BatchesReader:
    return BatchesReader(_Consumer(log), codec, TOPIC)  # type: ignore[arg-type]


def test_last_end_of_a_producer_and_of_any_producer() -> None:
    log: list[_Message | None] = []
    _refresh(log, "r1", "p1")
    _refresh(log, "r2", "p2")
    reader = _reader(log)
    mine = reader.last_end("p1", 0, len(log))
    assert mine is not None
    assert (mine.refresh_id, mine.producer, mine.offset, mine.timestamp_ms) == ("r1", "p1", 1, 1001)
    assert mine.partition_counts[("order_details", 1)] == 5
    anyone = reader.last_end(None, 0, len(log))
    assert anyone is not None and (anyone.refresh_id, anyone.producer) == ("r2", "p2")
    assert reader.last_end("p3", 0, len(log)) is None
    assert reader.last_end("p1", 0, 0) is None


def test_last_end_reads_back_in_steps_past_other_producers() -> None:
    log: list[_Message | None] = []
    _refresh(log, "mine", "p1")
    while len(log) < 2 * _STEP + 10:
        _refresh(log, f"other{len(log)}", "p2")
    found = _reader(log).last_end("p1", 0, len(log))
    assert found is not None and found.refresh_id == "mine" and found.offset == 1
    # Markers before the oldest retained offset are not looked for.
    assert _reader(log).last_end("p1", 3, len(log)) is None


def test_following_from_a_time_gives_end_markers_with_their_place() -> None:
    log: list[_Message | None] = []
    for refresh_id in ("r1", "r2", "r3"):
        _refresh(log, refresh_id)
    log.append(_Message(len(log), encode_batch_key(codec, "p1"), b"not avro", 99_000))
    reader = _reader(log)
    assert reader.read() is None  # not assigned yet
    reader.seek_time(4_000)  # r2's BEGIN is the first marker at or after it
    ends = reader.read()
    assert ends is not None
    assert [(e.refresh_id, e.offset, e.timestamp_ms) for e in ends] == [
        ("r2", 4, 4001),
        ("r3", 7, 7001),
    ]
    assert reader.read() is None  # nothing more arrived
    assert reader.position() == len(log)
    reader.close()
    assert reader.consumer.closed  # type: ignore[attr-defined]


@pytest.mark.parametrize("answer", ["lookup_errors", "lookup_unstable"])
def test_following_asks_again_until_the_partition_answers(
    monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """Offset -1 with the partition's error (a leader not known yet) is not "no marker
    that late"; nor is -1 with no error while the batches partition has not yet got the
    commit that the change topics show (a refresh's commit reaches its partitions in
    turn). Read from the end, the reader would pass the markers it was asked for."""
    monkeypatch.setattr(reader_module, "_NOT_READY_PAUSE", 0.0)
    log: list[_Message | None] = []
    for refresh_id in ("r1", "r2"):
        _refresh(log, refresh_id)
    reader = _reader(log)
    setattr(reader.consumer, answer, 3)
    reader.seek_time(0)
    ends = reader.read()
    assert ends is not None and [e.refresh_id for e in ends] == ["r1", "r2"]


def _impatient(monkeypatch: pytest.MonkeyPatch) -> tuple[BatchesReader, list[_Message | None]]:
    """A reader of one refresh's markers that asks again at once and for 0.05 s at most."""
    monkeypatch.setattr(reader_module, "_NOT_READY_PAUSE", 0.0)
    monkeypatch.setattr(reader_module, "_LOOKUP_TIMEOUT", 0.05)
    log: list[_Message | None] = []
    _refresh(log, "r1")
    return _reader(log), log


def test_with_no_marker_that_late_in_time_the_reader_goes_to_the_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reader, log = _impatient(monkeypatch)
    with caplog.at_level(logging.WARNING):
        reader.seek_time(10**9)  # after every marker
    assert "reading the markers from the end" in caplog.text
    assert not reader.read()  # at the end: nothing yet
    _refresh(log, "r2")
    ends = reader.read()
    assert ends is not None and [e.refresh_id for e in ends] == ["r2"]


def test_a_look_up_that_keeps_failing_is_a_broker_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, _ = _impatient(monkeypatch)
    reader.consumer.lookup_errors = 10**9  # type: ignore[attr-defined]
    with pytest.raises(BrokerUnavailableError, match="look up batch markers"):
        reader.seek_time(0)
    assert reader.read() is None  # not assigned: nothing read from the end


def test_following_skips_an_undecodable_marker_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[_Message | None] = [_Message(0, None, b"not avro", 1)]
    _refresh(log, "r1")
    reader = _reader(log)
    reader.seek_time(0)
    with caplog.at_level(logging.WARNING):
        ends = reader.read()
    assert ends is not None and [e.refresh_id for e in ends] == ["r1"]
    assert "undecodable batch marker at offset 0" in caplog.text


@pytest.fixture
def end_markers() -> Iterator[EndMarkers]:
    # The consumer it opens is replaced: nothing connects to this address.
    settings = load_settings(None, kafka_bootstrap_servers="127.0.0.1:9")
    found = EndMarkers(settings, codec, "group", until_ms=5_000)
    found._reader.close()
    log: list[_Message | None] = []
    for refresh_id in ("r1", "r2", "r3"):
        _refresh(log, refresh_id)
    found._reader = _reader(log)
    try:
        yield found
    finally:
        found.close()


def test_end_markers_keep_what_the_consumer_needs(end_markers: EndMarkers) -> None:
    assert end_markers.poll() == 0  # nothing needed yet
    end_markers.need(event_ts_ms=1_000)
    assert end_markers.poll() == 2  # r3 was stamped after until_ms
    assert sorted(end_markers.ends) == ["r1", "r2"]
    kept = end_markers.get("r2")
    assert kept is not None and kept.expected("orders", 0) == 2
    assert kept.overlap_seen is None  # the producer's digests are not kept
    assert end_markers.read_through(9)
    assert not end_markers.read_through(10)
