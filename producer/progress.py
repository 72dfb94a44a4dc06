"""The producer's committed progress, read back from the batches topic.

The END marker of each refresh carries the watermark (and the overlap digests,
and in procedure mode the fingerprint of the queue tables published). It is
written in the same Kafka transaction as the refresh's events, so the progress
read here with ``read_committed`` is exactly the progress of what consumers can
see: there is no second store to disagree with Kafka (promise 2).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from producer.watermark import Progress
from queuestream.errors import BrokerUnavailableError
from queuestream.kafka_clients import batches_topic, consumer_config
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["CommittedEnd", "read_last_end", "read_progress"]

log = logging.getLogger(__name__)

_STEP = 200
_TIMEOUT = 30.0
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


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CommittedEnd:
    """A committed END marker as it lies in the batches topic."""

    producer: str  # the key: the transactional id of the producer that wrote it
    offset: int
    timestamp_ms: int  # the message's timestamp: when the producer wrote the marker
    value: dict[str, Any]  # the decoded marker (schemas/avro/batches.value.avsc)


def read_progress(settings: Settings, codec: AvroCodec) -> Progress:
    """The last committed END marker of this producer, or empty progress.

    Call it after the transactional producer's init_transactions(), which aborts
    any transaction a crashed predecessor left open, so that the log end is stable.
    """
    producer = settings.effective_transactional_id
    found, low = _read_last_end(settings, codec, producer)
    if found is not None:
        value = found.value
        return Progress(
            refresh_id=value["refresh_id"],
            watermark=_aware(value["window_end"]),
            overlap_seen=Progress.unpack_digests(value["overlap_seen"]),
            snapshot_fingerprint=value["snapshot_fingerprint"],
        )
    if low > 0:
        log.warning(
            "%s starts at offset %d and holds no END marker of producer %s: its progress "
            "was deleted (retention?). Starting over from the first window; use "
            "--since DATE to re-sync further back",
            batches_topic(settings),
            low,
            producer,
        )
    return Progress()


def read_last_end(
    settings: Settings, codec: AvroCodec, producer: str | None = None
) -> CommittedEnd | None:
    """The last committed END marker of ``producer`` (of any producer when None), or None."""
    return _read_last_end(settings, codec, producer)[0]


def _read_last_end(
    settings: Settings, codec: AvroCodec, producer: str | None
) -> tuple[CommittedEnd | None, int]:
    """The last committed END marker and the batches topic's oldest retained offset."""
    topic = batches_topic(settings)
    # The log end including commit markers: a read_committed consumer reports the last
    # stable offset instead, which trails a just-committed refresh until the broker has
    # written its markers, and reading only that far could miss the newest END.
    probe = Consumer(
        consumer_config(settings, group_id=f"queuestream-progress-{uuid.uuid4().hex}")
        | {"isolation.level": "read_uncommitted"}
    )
    consumer = Consumer(
        consumer_config(
            settings,
            group_id=f"queuestream-progress-{uuid.uuid4().hex}",
            # A bounded read: at its end, an empty fetch answers at once (not in 0.5 s).
            **{"enable.partition.eof": True, "fetch.wait.max.ms": 10},
        )
    )
    try:
        partition = TopicPartition(topic, 0)
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                low, high = probe.get_watermark_offsets(partition, timeout=_TIMEOUT)
                break
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() in _NOT_READY and time.monotonic() < deadline:
                    time.sleep(0.1)  # the topic was just created; its leader is on the way
                    continue
                msg = f"cannot read {topic} at {settings.kafka_bootstrap_servers}: {error.str()}"
                raise BrokerUnavailableError(msg) from None
        end = high
        while end > low:
            start = max(low, end - _STEP)
            found = _last_end_marker(consumer, codec, partition, start, end, producer)
            if found is not None:
                return found, low
            end = start
        return None, low
    finally:
        probe.close()
        consumer.close()


def _last_end_marker(
    consumer: Consumer,
    codec: AvroCodec,
    partition: TopicPartition,
    start: int,
    end: int,
    producer: str | None,
) -> CommittedEnd | None:
    consumer.assign([TopicPartition(partition.topic, 0, start if start > 0 else OFFSET_BEGINNING)])
    found: CommittedEnd | None = None
    while True:
        message = consumer.poll(_TIMEOUT)
        if message is None:
            msg = f"timed out reading {partition.topic} between offsets {start} and {end}"
            raise BrokerUnavailableError(msg)
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                [position] = consumer.position([TopicPartition(partition.topic, 0)])
                if position.offset >= end:
                    break
                continue  # at the last stable offset: the commit markers are on the way
            msg = f"cannot read {partition.topic}: {error.str()}"
            raise BrokerUnavailableError(msg)
        offset = message.offset()
        if offset is not None and offset >= end:
            break
        key = codec.decode("batches", "key", message.key())
        value = codec.decode("batches", "value", message.value())
        if key is None or value is None or value["status"] != "END":
            continue
        if producer is not None and key["producer"] != producer:
            continue
        found = CommittedEnd(
            producer=key["producer"],
            offset=offset or 0,
            timestamp_ms=message.timestamp()[1],
            value=value,
        )
    return found
