"""Reading back what a refresh committed: every message of some topics, in offset order.

The producer benchmark produces those bytes again for its ceiling; the consumer
benchmark's breakdown decodes and applies them without the runtime.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from bench.errors import BenchError, Deadline

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
            "enable.partition.eof": True,
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
        consumer.assign(assignment)
        pending = {(tp.topic, tp.partition) for tp in assignment}
        found: dict[tuple[str, int], list[Record]] = {k: [] for k in pending}
        at_eof: set[tuple[str, int]] = set()
        while pending:
            deadline.check(f"reading back {topics[0]} and {len(topics) - 1} more topics")
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                error = message.error()
                topic, partition = str(message.topic()), int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_eof.add((topic, partition))
                        continue
                    msg = f"reading back {topic}[{partition}]: {error.str()}"
                    raise BenchError(msg)
                at_eof.discard((topic, partition))
                found[(topic, partition)].append(
                    (
                        int(message.offset() or 0),
                        message.timestamp()[1],
                        message.key(),
                        message.value(),
                    )
                )
            pending -= _read_to_end(consumer, at_eof)
            at_eof &= pending
    finally:
        consumer.close()
    return found


def _read_to_end(consumer: Consumer, at_eof: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The partitions of ``at_eof`` whose every committed message has been read.

    read_committed stops at the last stable offset, which trails the end until the
    transaction's commit markers are written, a moment after commit_transaction()
    returned: an end-of-partition there is not the end yet. The high watermark is
    the one the last fetch brought (cached): asking the broker would wait behind the
    consumer's long-polling fetch on the same connection.
    """
    done = set()
    for topic, partition in at_eof:
        tp = TopicPartition(topic, partition)
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        (position,) = consumer.position([tp])
        if position.offset >= high:
            done.add((topic, partition))
    return done
