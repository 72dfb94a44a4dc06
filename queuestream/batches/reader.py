"""The one reader of the batches topic: the last committed END, or END markers from a time on.

Three parts of queuestream read markers back, all through :class:`BatchesReader`:

* the producer, at start-up, reads its own last committed END: its progress
  (``producer/progress.py``). It does so after ``init_transactions()``, which
  aborts whatever transaction a crashed predecessor left open, so the log end
  is stable;
* the monitor reads the last committed END of any producer (the last batch);
* a consumer follows END markers from a time on (``consumers/markers.py``):
  a refresh is applied once its END says how many events to wait for.

The reader is a plain read_committed consumer of the one-partition topic: it
has no group offsets and never commits. The last END is found by reading back
from the log end in steps of ``_STEP`` offsets, so a long history is not read
from its start; following starts at the first marker written at or after a
time (Kafka's offsets-for-times).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from queuestream.batches.markers import EndMarker, decode_batch_key, decode_marker
from queuestream.errors import BrokerUnavailableError, DecodeError
from queuestream.failures import broker_failure
from queuestream.kafka_clients import assign_at_once, batches_topic, consumer_config
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["BatchesReader", "LastEnd", "read_last_end"]

log = logging.getLogger(__name__)

_STEP = 200  # offsets read per step back from the log end
_TIMEOUT = 30.0
_LOOKUP_TIMEOUT = 10.0
#: Errors while a topic created a moment ago still has no leader: wait, they pass.
_NOT_READY = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)
#: How long to wait before asking a partition that was not ready again.
_NOT_READY_PAUSE = 0.1


def _not_ready_yet(error: KafkaError, deadline: float) -> bool:
    """Is ``error`` a leader still on the way (:data:`_NOT_READY`), with time left before
    ``deadline`` to ask again? Then it waits a moment first."""
    if error.code() in _NOT_READY and time.monotonic() < deadline:
        time.sleep(_NOT_READY_PAUSE)
        return True
    return False


@dataclass(frozen=True, slots=True)
class LastEnd:
    """The last committed END found, and the oldest offset the topic still holds."""

    marker: EndMarker | None
    oldest_offset: int  # above 0: older markers were deleted (retention)


class BatchesReader:
    """Reads END markers of the batches topic with ``consumer`` (read_committed, EOF reported).

    Build it with :meth:`open`; a test hands in a stand-in consumer.
    """

    def __init__(
        self, consumer: Consumer, codec: AvroCodec, topic: str, where: str | None = None
    ) -> None:
        self.consumer = consumer
        self.codec = codec
        self.topic = topic
        self.where = where  # the bootstrap servers, named in errors

    @classmethod
    def open(
        cls, settings: Settings, codec: AvroCodec, name: str, *, bounded: bool = False
    ) -> BatchesReader:
        """A reader of ``settings``' batches topic; ``name`` is its (never committing) group id.

        ``bounded``: the reader reads up to a known offset and stops, so an empty fetch at
        the end should answer at once (not after librdkafka's default 0.5 s wait).
        """
        extra: dict[str, Any] = {"enable.partition.eof": True}
        if bounded:
            extra["fetch.wait.max.ms"] = 10
        consumer = Consumer(consumer_config(settings, name, **extra))
        return cls(consumer, codec, batches_topic(settings), settings.kafka_bootstrap_servers)

    def close(self) -> None:
        self.consumer.close()

    def _end_of(self, message: Any) -> EndMarker | None:
        """The END marker a message holds, with where it lies; None for a BEGIN.

        Raises DecodeError when the key or value cannot be decoded.
        """
        marker = decode_marker(self.codec, message.value())
        if not isinstance(marker, EndMarker):
            return None
        producer = decode_batch_key(self.codec, message.key())
        if producer is None:
            return None  # not a marker of this contract: every marker names its producer
        return replace(
            marker,
            producer=producer,
            offset=message.offset() or 0,
            timestamp_ms=message.timestamp()[1],
        )

    # -- the last committed END ---------------------------------------------------
    def last_end(self, producer: str | None, low: int, high: int) -> EndMarker | None:
        """The last END of ``producer`` (of any producer when None) between ``low`` and ``high``.

        ``high`` is the log end including commit markers; a read_committed reader
        reaches it once every transaction before it has its marker written.
        """
        end = high
        while end > low:
            start = max(low, end - _STEP)
            found = self._last_between(start, end, producer)
            if found is not None:
                return found
            end = start
        return None

    def _last_between(self, start: int, end: int, producer: str | None) -> EndMarker | None:
        consumer = self.consumer
        assign_at_once(
            consumer, [TopicPartition(self.topic, 0, start if start > 0 else OFFSET_BEGINNING)]
        )
        found: EndMarker | None = None
        while True:
            message = consumer.poll(_TIMEOUT)
            if message is None:
                msg = f"timed out reading {self.topic} between offsets {start} and {end}"
                raise BrokerUnavailableError(msg)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    [position] = consumer.position([TopicPartition(self.topic, 0)])
                    if position.offset >= end:
                        break
                    continue  # at the last stable offset: the commit markers are on the way
                doing = f"read {self.topic} between offsets {start} and {end}"
                raise broker_failure(error, self.where, doing)
            offset = message.offset()
            if offset is not None and offset >= end:
                break
            marker = self._end_of(message)
            if marker is not None and producer in (None, marker.producer):
                found = marker
        return found

    # -- following END markers from a time on ---------------------------------------
    def seek_time(self, from_ms: int) -> None:
        """Read on from the first marker written at ``from_ms`` or later.

        The look-up can fail for the partition alone (its leader not known yet, on a
        broker just started or a topic just made): librdkafka then answers offset -1
        with the partition's error, which is also how it says "no marker that late".
        Read as the latter, the reader went to the end, past the markers a consumer
        needed, and waited for them for ever. So a partition not ready is asked again
        for up to ``_LOOKUP_TIMEOUT`` seconds, and any other error raised.

        "No marker that late" is asked again too: a consumer looks markers up once it
        holds an event that needs one, and the event is committed, so its END marker is
        (or will be) there. But a transaction's commit reaches each of its partitions in
        turn, and the broker answers a look-up only below the batches partition's last
        stable offset: for a moment after the change topics show the event, the
        partition answers -1 with no error. Read from the end then, the reader started
        after the very END marker it needed (a consumer applied nothing for 180 s while
        the producer went on). Only when nothing that late shows within the time does
        the reader go to the end, and says so.
        """
        doing = f"look up batch markers in {self.topic}"
        deadline = time.monotonic() + _LOOKUP_TIMEOUT
        while True:
            try:
                found = self.consumer.offsets_for_times(
                    [TopicPartition(self.topic, 0, from_ms)], timeout=_LOOKUP_TIMEOUT
                )
            except KafkaException as exc:
                raise broker_failure(exc.args[0], self.where, doing) from None
            error = found[0].error if found else None
            offset = found[0].offset if found else -1
            if error is None:
                if offset >= 0 or time.monotonic() >= deadline:
                    break
                time.sleep(_NOT_READY_PAUSE)  # committed, not yet stable here: again
                continue
            if not _not_ready_yet(error, deadline):
                raise broker_failure(error, self.where, doing)
            log.debug("%s: %s; asking again", doing, error.str())
        if offset < 0:
            offset = OFFSET_END
            log.warning(
                "%s: none written at %d or later after %.0f s; reading the markers from "
                "the end of %s",
                doing,
                from_ms,
                _LOOKUP_TIMEOUT,
                self.topic,
            )
        log.debug(
            "reading batch markers of %s from offset %s (time %d)", self.topic, offset, from_ms
        )
        self.consumer.assign([TopicPartition(self.topic, 0, offset)])

    def read(self, max_messages: int = 500) -> list[EndMarker] | None:
        """The END markers among the messages that have arrived; None when none arrived.

        A marker that cannot be decoded is logged and skipped.
        """
        messages = self.consumer.consume(num_messages=max_messages, timeout=0)
        if not messages:
            return None
        found = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("batch markers: %s", error.str())
                continue
            try:
                marker = self._end_of(message)
            except DecodeError as exc:
                log.warning(
                    "skipping an undecodable batch marker at offset %d: %s", message.offset(), exc
                )
                continue
            if marker is not None:
                found.append(marker)
        return found

    def position(self) -> int | None:
        """The offset the reader reads next; None when it cannot tell (not assigned)."""
        try:
            [position] = self.consumer.position([TopicPartition(self.topic, 0)])
        except KafkaException:
            return None
        return int(position.offset)


def _log_bounds(probe: Consumer, topic: str, settings: Settings) -> tuple[int, int]:
    """The oldest offset and the log end, waiting for the leader of a topic just created."""
    partition = TopicPartition(topic, 0)
    deadline = time.monotonic() + _TIMEOUT
    while True:
        try:
            low, high = probe.get_watermark_offsets(partition, timeout=_TIMEOUT)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if _not_ready_yet(error, deadline):
                continue  # the topic was just created; its leader is on the way
            where = settings.kafka_bootstrap_servers
            raise broker_failure(error, where, f"read the offsets of {topic}") from None
        return int(low), int(high)


def read_last_end(settings: Settings, codec: AvroCodec, producer: str | None = None) -> LastEnd:
    """The last committed END marker of ``producer`` (of any producer when None)."""
    # The log end including commit markers: a read_committed consumer reports the last
    # stable offset instead, which trails a just-committed refresh until the broker has
    # written its markers, and reading only that far could miss the newest END.
    probe = Consumer(
        consumer_config(settings, group_id=f"queuestream-progress-{uuid.uuid4().hex}")
        | {"isolation.level": "read_uncommitted"}
    )
    reader = BatchesReader.open(
        settings, codec, f"queuestream-progress-{uuid.uuid4().hex}", bounded=True
    )
    try:
        low, high = _log_bounds(probe, reader.topic, settings)
        return LastEnd(reader.last_end(producer, low, high), low)
    finally:
        probe.close()
        reader.close()
