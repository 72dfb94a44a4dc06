"""Kafka clients used as they work: a consumer just made learns its partitions' leaders
before it is assigned them, a batch read returns what has arrived without waiting for a
full batch, and an admin client handed in is the one used.

Each was a wait measured on a real broker: librdkafka waits a fixed 500 ms before a
consumer just made first asks where to start reading (`bench/recovery.py`: a rebuild and
a monitor snapshot each lost it), and ``consume(10_000, 0.2)`` holding 600 messages
returned after 0.2 s.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from queuestream import kafka_clients
from queuestream.kafka_clients import (
    answer_unless_stopped,
    assign_at_once,
    batches_topic,
    change_topics,
    consume_arrived,
    ensure_topics,
)
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


class _Batching:
    """librdkafka's batch consume: ``consume(n, timeout)`` returns once it holds ``n``
    messages or the timeout is up; ``arrivals`` are (time, message) in time order."""

    def __init__(self, arrivals: list[tuple[float, str]]) -> None:
        self.arrivals = arrivals
        self.now = 0.0

    def consume(self, num_messages: int, timeout: float) -> list[str]:
        taken: list[str] = []
        give_up = self.now + timeout
        while len(taken) < num_messages:
            if self.arrivals and self.arrivals[0][0] <= max(self.now, 0):
                taken.append(self.arrivals.pop(0)[1])
            elif self.arrivals and self.arrivals[0][0] <= give_up:
                self.now = self.arrivals[0][0]
            else:
                self.now = max(self.now, give_up)
                break
        return taken


def _arrived(consumer: _Batching, max_messages: int, timeout: float) -> list[str]:
    return cast("list[str]", consume_arrived(cast("Consumer", consumer), max_messages, timeout))


def test_what_has_arrived_is_returned_at_once() -> None:
    consumer = _Batching([(0.0, "a"), (0.0, "b"), (5.0, "late")])
    assert _arrived(consumer, 10_000, 0.2) == ["a", "b"]
    assert consumer.now == 0.0
    plain = _Batching([(0.0, "a"), (0.0, "b"), (5.0, "late")])
    assert plain.consume(10_000, 0.2) == ["a", "b"]
    assert plain.now == 0.2  # what the loop did: wait out the timeout


def test_when_nothing_has_arrived_the_first_arrival_ends_the_wait() -> None:
    consumer = _Batching([(0.05, "a"), (0.05, "b"), (0.15, "c")])
    assert _arrived(consumer, 10_000, 0.2) == ["a", "b"]
    assert consumer.now == 0.05
    assert _arrived(consumer, 10_000, 0.2) == ["c"]
    assert _arrived(consumer, 10_000, 0.2) == []
    assert consumer.now == 0.15 + 0.2  # nothing came: the whole timeout


def test_no_more_than_asked_for() -> None:
    consumer = _Batching([(0.1, str(i)) for i in range(5)])
    assert _arrived(consumer, 3, 1.0) == ["0", "1", "2"]
    assert _arrived(consumer, 1, 1.0) == ["3"]


def test_an_admin_client_of_a_broker_that_does_not_answer_says_it_waits(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing was printed for the 15 s (broker_timeout_seconds) a command then waited
    before it said the broker was unreachable. Nothing listens at port 1."""
    monkeypatch.setattr(kafka_clients, "_SAID_WAITING", set())  # said once a process
    settings = load_settings(None, kafka_bootstrap_servers="127.0.0.1:1", broker_timeout_seconds=1)
    with caplog.at_level("INFO", logger="queuestream.kafka_clients"):
        kafka_clients.admin_client(settings)
    assert "Kafka at 127.0.0.1:1 does not answer yet: waiting up to 1s" in caplog.text


class _Unanswered:
    """A metadata request to a broker that is down (``_TRANSPORT``), or up and slow
    (``_TIMED_OUT``): each call notes its timeout; the stop is set at the ``stop_at``-th."""

    def __init__(self, code: int, stop: threading.Event, stop_at: int) -> None:
        self.code = code
        self.stop = stop
        self.stop_at = stop_at
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> Any:
        self.timeouts.append(timeout)
        if len(self.timeouts) == self.stop_at:
            self.stop.set()  # as SIGTERM's handler does, once the call returns
        raise KafkaException(KafkaError(self.code))


def test_a_wait_for_a_broker_that_is_down_ends_once_stopped() -> None:
    stop = threading.Event()
    ask = _Unanswered(KafkaError._TRANSPORT, stop, stop_at=3)
    with pytest.raises(KafkaException):
        answer_unless_stopped(ask, 15.0, stop)
    # Steps of half a second, not the whole 15 s in one call; none after the stop.
    assert len(ask.timeouts) == 3
    assert all(0 < t <= 0.5 for t in ask.timeouts)


def test_a_broker_that_is_up_and_slow_gets_the_rest_of_the_time_in_one_request() -> None:
    stop = threading.Event()
    ask = _Unanswered(KafkaError._TIMED_OUT, stop, stop_at=2)
    with pytest.raises(KafkaException):
        answer_unless_stopped(ask, 15.0, stop)
    assert ask.timeouts[0] <= 0.5
    assert 14.0 < ask.timeouts[1] <= 15.0


def test_without_a_stop_event_the_request_waits_as_before() -> None:
    ask = _Unanswered(KafkaError._TRANSPORT, threading.Event(), stop_at=0)
    with pytest.raises(KafkaException):
        answer_unless_stopped(ask, 15.0, None)
    assert ask.timeouts == [15.0]


class _Closing:
    """A consumer whose close waits until ``release`` is set, or raises ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.release = threading.Event()
        self.error = error
        self.closed = 0

    def close(self) -> None:
        self.closed += 1
        if self.error is not None:
            raise self.error
        self.release.wait(30)


def test_a_close_kafka_never_answers_is_given_up_after_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _Closing()
    started = time.monotonic()
    try:
        kafka_clients.close_consumer(consumer, "the consumer of group g", within=0.2)  # type: ignore[arg-type]
        took = time.monotonic() - started
    finally:
        consumer.release.set()
    assert 0.2 <= took < 2.0
    assert consumer.closed == 1
    assert "closing the consumer of group g: Kafka did not answer within 0.2s" in caplog.text


def test_a_close_that_answers_is_waited_for_and_its_kafka_error_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _Closing()
    consumer.release.set()
    kafka_clients.close_consumer(consumer, "c", within=5)  # type: ignore[arg-type]
    assert consumer.closed == 1 and "did not answer" not in caplog.text

    failing = _Closing(KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down")))
    kafka_clients.close_consumer(failing, "c", within=5)  # type: ignore[arg-type]
    assert "closing c:" in caplog.text and "broker down" in caplog.text


def test_a_rebalance_callback_failing_in_close_is_raised_to_the_caller() -> None:
    consumer = _Closing(ValueError("the revoke callback failed"))
    with pytest.raises(ValueError, match="the revoke callback failed"):
        kafka_clients.close_consumer(consumer, "c", within=5)  # type: ignore[arg-type]


def test_a_close_that_fails_after_it_was_given_up_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _Closing()
    late = KafkaException(KafkaError(KafkaError._TRANSPORT, "the coordinator went away"))

    def close() -> None:
        consumer.release.wait(30)
        raise late

    consumer.close = close  # type: ignore[method-assign]
    kafka_clients.close_consumer(consumer, "c", within=0.1)  # type: ignore[arg-type]
    assert "did not answer within 0.1s" in caplog.text
    consumer.release.set()
    wait_until = time.monotonic() + 5
    while "after it was given up" not in caplog.text and time.monotonic() < wait_until:
        time.sleep(0.01)
    assert "closing c, after it was given up: " in caplog.text
    assert "the coordinator went away" in caplog.text
