"""Kafka clients used as given: a consumer just made learns its partitions' leaders
before it is assigned them, and an admin client handed in is the one used.

Without that, librdkafka waits a fixed 500 ms before it first asks where to start
reading (`bench/recovery.py`: a rebuild and a monitor snapshot each lost it).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from queuestream import kafka_clients
from queuestream.kafka_clients import assign_at_once, batches_topic, change_topics, ensure_topics
from queuestream.settings import Settings, load_settings


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


class _Admin:
    """An admin client as confluent-kafka's is: falsy while nothing is queued (``len`` 0)."""

    def __len__(self) -> int:
        return 0

    def list_topics(self, timeout: float) -> Any:
        topics = {
            name: SimpleNamespace(
                partitions=dict.fromkeys(range(1 if "." not in name else 3)), error=None
            )
            for name in [*change_topics(_SETTINGS), batches_topic(_SETTINGS)]
        }
        return SimpleNamespace(topics=topics)


_SETTINGS = load_settings(None).model_copy(update={"topic_prefix": "t"})


def test_ensure_topics_uses_the_admin_client_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an admin client, ensure_topics made another (``admin or admin_client(...)``):
    a connection and 55 ms more in every rebuild's plan."""

    def another(_settings: Settings) -> None:
        msg = "made an admin client of its own"
        raise AssertionError(msg)

    monkeypatch.setattr(kafka_clients, "admin_client", another)
    assert ensure_topics(_SETTINGS, _Admin()) == 3  # type: ignore[arg-type]
