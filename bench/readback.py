"""Reading back what a refresh committed: every message of some topics, in offset order.

The producer benchmark produces those bytes again for its ceiling; the consumer
benchmark's breakdown decodes and applies them without the runtime.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, TopicPartition

from bench.errors import BenchError, Deadline
from queuestream.kafka_clients import consume_arrived

__all__ = ["Record", "read_committed"]


Record = tuple[int, int, bytes | None, bytes | None]  # (offset, timestamp ms, key, value)


def read_committed(
    bootstrap: str, topics: list[str], deadline: Deadline
) -> dict[tuple[str, int], list[Record]]:
    """Every committed message of ``topics``, per (topic, partition), in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-readback-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=15)
        assignment = []
        for topic in topics:
            if topic not in metadata.topics:
                msg = f"topic {topic} not found when reading back"
                raise BenchError(msg)
            for partition in metadata.topics[topic].partitions:
                assignment.append(TopicPartition(topic, partition, 0))
        # Where each partition ends now: read to there. Reading on to the end as it moves
        # would never stop while a producer keeps committing (produce --interval 1).
        marks = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=15)
            for tp in assignment
        }
        ends = {slot: high for slot, (_low, high) in marks.items()}
        consumer.assign(assignment)
        # Nothing to read of a partition that is empty (all of it deleted, or none written).
        pending = {slot for slot, (low, high) in marks.items() if high > low}
        found: dict[tuple[str, int], list[Record]] = {slot: [] for slot in marks}
        while pending:
            deadline.check(f"reading back {topics[0]} and {len(topics) - 1} more topics")
            for message in consume_arrived(consumer, 10_000, 1.0):
                error = message.error()
                topic, partition = str(message.topic()), int(message.partition() or 0)
                if error is not None:
                    msg = f"reading back {topic}[{partition}]: {error.str()}"
                    raise BenchError(msg)
                offset = int(message.offset() or 0)
                if offset >= ends[topic, partition]:
                    continue  # committed after reading began
                found[(topic, partition)].append(
                    (
                        offset,
                        message.timestamp()[1],
                        message.key(),
                        message.value(),
                    )
                )
            pending -= _read_to_end(consumer, pending, ends)
    finally:
        consumer.close()
    return found


def _read_to_end(
    consumer: Consumer, pending: set[tuple[str, int]], ends: dict[tuple[str, int], int]
) -> set[tuple[str, int]]:
    """The partitions of ``pending`` read to the ``ends`` taken before reading.

    Not their end-of-partition: read_committed stops at the last stable offset, which
    trails the end until a transaction's commit marker is written, and a producer that
    keeps committing keeps moving the end; the consumer's position tells.
    """
    positions = consumer.position([TopicPartition(t, p) for t, p in pending])
    return {
        (tp.topic, tp.partition) for tp in positions if tp.offset >= ends[tp.topic, tp.partition]
    }
