"""The end of a refresh's transaction while the broker is away (producer.publisher).

A broker that stops between the body and the commit (a rolling restart, an outage)
leaves ``commit_transaction`` waiting. librdkafka's contract: a commit that timed out
(a retriable error) is resumed by calling it again, never aborted. The publisher
waits in steps of ``broker_timeout_seconds`` and logs each, so the outage shows in
the log at once, and past its patience says the outcome is unknown (the produce loop
then restarts the producer, which reads back what committed).
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from producer import publisher as publisher_module
from producer.publisher import TransactionalPublisher
from queuestream.errors import (
    BrokerUnavailableError,
    CommitOutcomeUnknownError,
    FatalError,
    RetriableError,
)
from queuestream.settings import Settings
from tests.helpers import FakeClock

TIMED_OUT = KafkaError(
    KafkaError._TIMED_OUT,
    "Failed to flush all outstanding messages within the API timeout: 2 message(s) remaining",
    retriable=True,
)


class FakeProducer:
    """A transactional producer whose commit and abort fail with the errors given
    (a timeout takes the time it is given on the clock), then succeed; ``produce``
    raises ``produce_error`` when there is one."""

    def __init__(
        self,
        clock: FakeClock,
        commit: list[KafkaError],
        abort: list[KafkaError],
        produce_error: KafkaError | None = None,
        init: list[KafkaError] | None = None,
        stop_at_init: tuple[int, threading.Event] | None = None,
    ) -> None:
        self.clock = clock
        self.commit_errors = commit
        self.abort_errors = abort
        self.produce_error = produce_error
        self.init_errors = init or []
        self.stop_at_init = stop_at_init  # SIGTERM during the init call of that number
        self.calls: list[tuple[str, float]] = []
        self.inits: list[float] = []  # the timeouts init_transactions was given
        self.asked_about: list[str | None] = []

    def init_transactions(self, timeout: float) -> None:
        self.inits.append(timeout)
        if self.stop_at_init is not None and self.stop_at_init[0] == len(self.inits):
            self.stop_at_init[1].set()
        if self.init_errors:
            self.clock.sleep(timeout)
            raise KafkaException(self.init_errors.pop(0))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> None:
        self.asked_about.append(topic)

    def begin_transaction(self) -> None:
        pass

    def poll(self, _timeout: float) -> int:
        return 0

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        if self.produce_error is not None:
            raise KafkaException(self.produce_error)

    def _end(self, what: str, errors: list[KafkaError], timeout: float) -> None:
        self.calls.append((what, timeout))
        if errors:
            error = errors.pop(0)
            if error.code() == KafkaError._TIMED_OUT:
                self.clock.sleep(timeout)
            raise KafkaException(error)

    def commit_transaction(self, timeout: float) -> None:
        self._end("commit", self.commit_errors, timeout)

    def abort_transaction(self, timeout: float) -> None:
        self._end("abort", self.abort_errors, timeout)


def _publisher(
    monkeypatch: pytest.MonkeyPatch,
    commit: list[KafkaError],
    abort: list[KafkaError] | None = None,
    produce_error: KafkaError | None = None,
) -> tuple[TransactionalPublisher, FakeProducer]:
    clock = FakeClock(1000.0)
    monkeypatch.setattr(publisher_module, "time", types.SimpleNamespace(monotonic=clock))
    fake = FakeProducer(clock, commit, abort or [], produce_error)
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1", broker_timeout_seconds=2, transactional_id="t"
    )
    return TransactionalPublisher(settings, producer=fake), fake  # type: ignore[arg-type]


def _no_messages(_send: Any) -> None:
    pass


def test_a_commit_the_broker_does_not_confirm_is_resumed_and_each_wait_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    publisher, fake = _publisher(monkeypatch, [TIMED_OUT, TIMED_OUT])
    with caplog.at_level(logging.WARNING, logger="producer.publisher"):
        publisher.transaction(_no_messages)
    # Resumed, never aborted; each call waits one broker timeout, not a minute.
    assert fake.calls == [("commit", 2), ("commit", 2), ("commit", 2)]
    waits = [r.getMessage() for r in caplog.records]
    assert len(waits) == 2, waits
    assert waits[0].startswith("commit not acknowledged yet after 2 s (Failed to flush")
    assert waits[1].startswith("commit not acknowledged yet after 4 s")


def test_past_its_patience_a_commit_has_an_unknown_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = int(publisher_module._FINISH_PATIENCE / 2) + 5
    publisher, fake = _publisher(monkeypatch, [TIMED_OUT] * steps)
    with pytest.raises(CommitOutcomeUnknownError, match="whether the refresh committed"):
        publisher.transaction(_no_messages)
    # Tried for the patience, in steps of the broker timeout, then given up: not aborted.
    assert len(fake.calls) == publisher_module._FINISH_PATIENCE / 2
    assert {what for what, _ in fake.calls} == {"commit"}


def test_a_commit_that_needs_an_abort_is_aborted_and_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_abort = KafkaError(KafkaError._STATE, "epoch bump", txn_requires_abort=True)
    publisher, fake = _publisher(monkeypatch, [needs_abort])
    with pytest.raises(RetriableError, match="it is aborted: nothing was committed"):
        publisher.transaction(_no_messages)
    assert fake.calls == [("commit", 2), ("abort", 2)]


def test_an_abort_the_broker_does_not_confirm_is_resumed_then_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing_body(_send: Any) -> None:
        failed = "the body failed"
        raise FatalError(failed)

    publisher, fake = _publisher(monkeypatch, [], abort=[TIMED_OUT])
    with pytest.raises(FatalError, match="the body failed"):
        publisher.transaction(failing_body)
    assert fake.calls == [("abort", 2), ("abort", 2)]

    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    publisher, fake = _publisher(monkeypatch, [], abort=[fatal])
    with pytest.raises(CommitOutcomeUnknownError):
        publisher.transaction(failing_body)
    assert fake.calls == [("abort", 2)]


def test_a_transaction_that_must_be_aborted_is_aborted_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not a raw KafkaException out of the refresh: a RetriableError, after the abort,
    when ``produce`` fails as librdkafka's does after an abort that raced its own
    produce requests."""
    erroneous = KafkaError(
        KafkaError._STATE,
        "Unable to produce message: Local: Erroneous state",
        txn_requires_abort=True,
    )
    publisher, fake = _publisher(monkeypatch, [], produce_error=erroneous)
    with pytest.raises(RetriableError, match="it is aborted: nothing was committed"):
        publisher.transaction(lambda send: send("exigo.orders", b"k", b"v", 0))
    assert fake.calls == [("abort", 2)]


def _initialising(
    monkeypatch: pytest.MonkeyPatch, init: list[KafkaError], stop: threading.Event | None
) -> tuple[FakeProducer, Settings]:
    clock = FakeClock(1000.0)
    monkeypatch.setattr(publisher_module, "time", types.SimpleNamespace(monotonic=clock))
    at = None if stop is None else (2, stop)
    fake = FakeProducer(clock, [], [], init=init, stop_at_init=at)
    return fake, Settings(kafka_bootstrap_servers="127.0.0.1:1", transactional_id="t")


def test_init_transactions_waits_in_steps_a_stop_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker gone as the producer starts: the init, resumable after a timeout, is
    asked in 2 s steps, and a SIGTERM during the second ends it with the broker's error
    (it waited a whole minute in one call)."""
    stop = threading.Event()
    fake, settings = _initialising(monkeypatch, [TIMED_OUT] * 40, stop)
    with pytest.raises(BrokerUnavailableError):
        TransactionalPublisher(settings, producer=fake, stop=stop)  # type: ignore[arg-type]
    assert fake.inits == [publisher_module._STOP_STEP] * 2

    # Not stopped: resumed until the broker answers, within the minute.
    fake, settings = _initialising(monkeypatch, [TIMED_OUT] * 3, threading.Event())
    TransactionalPublisher(settings, producer=fake, stop=threading.Event())  # type: ignore[arg-type]
    assert fake.inits == [publisher_module._STOP_STEP] * 4

    # Without a stop event: one call with the whole time, as librdkafka advises.
    fake, settings = _initialising(monkeypatch, [TIMED_OUT], None)
    with pytest.raises(BrokerUnavailableError):
        TransactionalPublisher(settings, producer=fake)  # type: ignore[arg-type]
    assert fake.inits == [publisher_module._INIT_TIMEOUT]


def test_before_each_transaction_the_broker_is_asked_about_one_topic_not_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check that the broker answers (before a snapshot is taken) asks for the
    metadata of the batches topic only: that of every topic grows with the cluster."""
    publisher, fake = _publisher(monkeypatch, [])
    publisher.transaction(_no_messages)
    publisher.transaction(_no_messages)
    assert fake.asked_about == ["exigo.batches", "exigo.batches"]
