"""The changelog of what the producer published: a compacted topic, written with each batch.

Every event a batch publishes (and every delete) writes one record here in the
batch's own Kafka transaction, so the changelog holds exactly what consumers can
read: the state-store-with-changelog pattern of Kafka Streams. A producer that
lost its machine (or its local cache, :mod:`producer.published_state`) reads
the changelog back and knows again what it published.

The topic is ``__queuestream-state.<prefix>``: internal (the double underscore),
compacted, one partition. Records:

* key ``<table>/<k1>/<k2>`` (the row's key columns; ``k2`` is 0 for one-column
  keys), value :class:`Published` packed as format byte 1, the version
  (ModifiedDate in microseconds since the epoch, signed 64-bit big-endian), the
  CustomerID whose partition the row's events go to (the same), then the row's
  Avro bytes as published (after masking: the ``before`` image of its delete,
  and what the sweep compares the source with);
* a null value (a tombstone): the row was deleted;
* key ``__sweep__``, value JSON: where the sweep is (:mod:`producer.sweep`).
"""

from __future__ import annotations

import functools
import logging
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from queuestream.errors import BrokerUnavailableError
from queuestream.kafka_clients import assign_at_once, consume_arrived, consumer_config
from queuestream.settings import Settings

__all__ = [
    "SWEEP_KEY",
    "Key",
    "Published",
    "pack",
    "packed_key",
    "parent_range",
    "parse_record_key",
    "read_changelog",
    "record_key",
    "record_key_format",
    "state_key_of",
    "state_topic",
    "unpacked_key",
]

log = logging.getLogger(__name__)

#: A row's key: its key columns as integers, the second 0 for one-column keys.
Key = tuple[int, int]
#: The second column's offset in a packed key: it runs from -2**31.
_SECOND = 1 << 31


def state_key_of(first: object, second: object = 0) -> Key | None:
    """A row's key columns as the state keys them; None unless both are integers (SQLite
    keeps any type in any column), which the state cannot hold."""
    if type(first) is int and type(second) is int:
        return (first, second)
    return None


def packed_key(key: Key) -> int:
    """A key as one signed 64-bit integer, one to one and in (k1, k2) order: both columns
    are the contract's 32-bit ints. The local state keys its tables by it, and a refresh
    keeps the lines it published in a set of them (a third of the memory of tuples)."""
    return (key[0] << 32) + key[1] + _SECOND


def unpacked_key(packed: int) -> Key:
    return (packed >> 32, (packed & 0xFFFF_FFFF) - _SECOND)


def parent_range(parent: int) -> tuple[int, int]:
    """The first and last packed keys whose first column is ``parent`` (an order's lines;
    a packed key's parent is ``key >> 32``)."""
    first = parent << 32  # packed_key((parent, -2**31))
    return first, first + 0xFFFF_FFFF  # packed_key((parent, 2**31 - 1))


SWEEP_KEY = b"__sweep__"
_FORMAT = 1
_HEAD = struct.Struct(">Bqq")
_READ_TIMEOUT = 30.0  # seconds without progress before reading back gives up


def state_topic(prefix: str) -> str:
    return f"__queuestream-state.{prefix}"


@dataclass(frozen=True, slots=True)
class Published:
    """The last version of a row the producer published."""

    version: int  # ModifiedDate, microseconds since the epoch
    customer: int  # the CustomerID its events are partitioned by
    row: bytes  # the Avro row as published (after masking)

    def encode(self) -> bytes:
        return pack(self.version, self.customer, self.row)

    @classmethod
    def decode(cls, data: bytes) -> Published:
        form, version, customer = _HEAD.unpack_from(data)
        if form != _FORMAT:
            msg = f"state record format {form}, this version reads {_FORMAT}"
            raise ValueError(msg)
        return cls(version, customer, bytes(data[_HEAD.size :]))


def pack(version: int, customer: int, row: bytes) -> bytes:
    """The value of a state record (:meth:`Published.encode`) without a Published made."""
    return _HEAD.pack(_FORMAT, version, customer) + row


def record_key(table: str, key: Key) -> bytes:
    """A row's record key, ``<table>/<k1>/<k2>``."""
    return record_key_format(table) % key


@functools.cache
def record_key_format(table: str) -> bytes:
    """``record_key(table, key)`` is ``record_key_format(table) % key``: a refresh formats
    hundreds of thousands, and bytes' ``%`` takes half the time of an f-string encoded."""
    return table.replace("%", "%%").encode() + b"/%d/%d"


def parse_record_key(data: bytes) -> tuple[str, Key]:
    table, k1, k2 = data.decode().split("/")
    return table, (int(k1), int(k2))


def read_changelog(settings: Settings) -> Iterator[tuple[bytes, bytes | None]]:
    """Every committed record of the changelog, oldest first (compaction keeps the latest).

    Call it after the transactional producer's init_transactions(), so that nothing of
    this producer is still open and the end is stable.
    """
    topic = state_topic(settings.topic_prefix)
    consumer = Consumer(
        consumer_config(
            settings,
            f"queuestream-state-{uuid.uuid4().hex[:8]}",
            **{
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
                # Small records, read once: a small read-ahead keeps the rebuild's memory
                # flat however long the changelog is.
                "queued.max.messages.kbytes": 8192,
                "fetch.max.bytes": 4 * 1024 * 1024,
                "max.partition.fetch.bytes": 1024 * 1024,
            },
        )
    )
    try:
        assign_at_once(consumer, [TopicPartition(topic, 0, OFFSET_BEGINNING)])
        last_progress = time.monotonic()
        while True:
            messages = consume_arrived(consumer, 5000, 1.0)
            if not messages:
                if time.monotonic() - last_progress > _READ_TIMEOUT:
                    msg = f"reading {topic} back made no progress for {_READ_TIMEOUT:g}s"
                    raise BrokerUnavailableError(msg)
                continue
            last_progress = time.monotonic()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return
                    msg = f"cannot read {topic}: {error.str()}"
                    raise BrokerUnavailableError(msg)
                key = message.key()
                if key is not None:
                    yield key, message.value()
    finally:
        consumer.close()
