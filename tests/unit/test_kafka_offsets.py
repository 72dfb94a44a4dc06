"""Reading offsets from Kafka: a partition whose leader is not settled yet is asked again.

Right after a topic is made, or while a leader moves, ListOffsets answers
NOT_LEADER_OR_FOLLOWER for a partition; ``rebuild`` and ``replay`` planned right after a
refresh stopped on it, with a message saying it would be tried again.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from queuestream.errors import BrokerAccessError, BrokerUnavailableError
from queuestream.kafka_offsets import list_offsets
from tests.helpers import FakeClock


class _Answer:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Admin:
    """Answers ListOffsets from a script: per partition, the errors to give before its offset."""

    def __init__(
        self, offsets: dict[tuple[str, int], int], errors: dict[tuple[str, int], list[int]]
    ):
        self.offsets = offsets
        self.errors = {p: list(codes) for p, codes in errors.items()}
        self.asked: list[set[tuple[str, int]]] = []

    def list_offsets(
        self, request: Mapping[TopicPartition, Any], **_options: Any
    ) -> dict[TopicPartition, Future[Any]]:
        self.asked.append({(tp.topic, tp.partition) for tp in request})
        futures: dict[TopicPartition, Future[Any]] = {}
        for tp in request:
            future: Future[Any] = Future()
            codes = self.errors.get((tp.topic, tp.partition))
            if codes:
                future.set_exception(KafkaException(KafkaError(codes.pop(0), "from the script")))
            else:
                future.set_result(_Answer(self.offsets[(tp.topic, tp.partition)]))
            futures[tp] = future
        return futures


_OFFSETS = {("t", 0): 10, ("t", 1): 20, ("t", 2): 30}


def _read(admin: _Admin, clock: FakeClock, within: float = 15.0) -> dict[tuple[str, int], Any]:
    return list_offsets(
        admin,  # type: ignore[arg-type]
        dict.fromkeys(_OFFSETS, object()),  # type: ignore[arg-type]
        "log end",
        within=within,
        clock=clock,
        sleep=clock.sleep,
    )


def test_a_partition_without_a_leader_yet_is_asked_again_alone() -> None:
    not_leader = KafkaError.NOT_LEADER_FOR_PARTITION
    admin = _Admin(_OFFSETS, {("t", 1): [not_leader, KafkaError.LEADER_NOT_AVAILABLE]})
    clock = FakeClock()
    found = _read(admin, clock)
    assert {p: a.offset for p, a in found.items()} == _OFFSETS
    assert admin.asked == [set(_OFFSETS), {("t", 1)}, {("t", 1)}]
    assert clock.waits == [0.1, 0.2]  # the project's backoff, doubling


def test_a_leader_that_never_settles_is_an_outage_after_the_bound() -> None:
    admin = _Admin(_OFFSETS, {("t", 2): [KafkaError.NOT_LEADER_FOR_PARTITION] * 100})
    clock = FakeClock()
    with pytest.raises(BrokerUnavailableError, match=r"log end of t\[2\].*retry in a moment"):
        _read(admin, clock, within=5.0)
    assert 5.0 <= clock.now <= 5.0 + 2.0  # asked until the bound, then raised
    assert len(admin.asked) < 100


def test_an_error_that_does_not_pass_is_raised_at_once() -> None:
    admin = _Admin(_OFFSETS, {("t", 0): [KafkaError.TOPIC_AUTHORIZATION_FAILED]})
    clock = FakeClock()
    with pytest.raises(BrokerAccessError, match=r"t\[0\]"):
        _read(admin, clock)
    assert admin.asked == [set(_OFFSETS)]
    assert clock.waits == []
