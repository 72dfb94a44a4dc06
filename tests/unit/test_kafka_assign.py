"""A consumer just made learns its partitions' leaders before it is assigned them.

Without that, librdkafka waits a fixed 500 ms before it first asks where to start
reading (`bench/recovery.py`: a rebuild and a monitor snapshot each lost it).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from queuestream.kafka_clients import assign_at_once


class _Consumer:
    """Records what it is asked, in order."""

    def __init__(self, metadata_fails: bool = False) -> None:
        self.metadata_fails = metadata_fails
        self.calls: list[tuple[str, Any]] = []

    def list_topics(self, topic: str, timeout: float) -> None:
        self.calls.append(("metadata", topic))
        if self.metadata_fails:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", sorted((tp.topic, tp.partition) for tp in partitions)))


_PARTITIONS = [TopicPartition("b", 0), TopicPartition("a", 1), TopicPartition("a", 0)]


def test_the_topics_metadata_is_asked_for_before_the_partitions_are_assigned() -> None:
    consumer = _Consumer()
    assign_at_once(consumer, _PARTITIONS)  # type: ignore[arg-type]
    assert consumer.calls == [
        ("metadata", "a"),
        ("metadata", "b"),
        ("assign", [("a", 0), ("a", 1), ("b", 0)]),
    ]


def test_without_metadata_the_partitions_are_assigned_anyway() -> None:
    consumer = _Consumer(metadata_fails=True)
    assign_at_once(consumer, _PARTITIONS)  # type: ignore[arg-type]
    # one failed request is enough to know the broker is not answering now
    assert consumer.calls == [("metadata", "a"), ("assign", [("a", 0), ("a", 1), ("b", 0)])]
