"""The one backoff formula and the retry loop every command uses."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from queuestream.errors import BrokerUnavailableError, CommitOutcomeUnknownError, ConfigurationError
from queuestream.failures import broker_failure
from queuestream.retry import Backoff, Outage, retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(first=2.0, maximum=30.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(10_000) == 30.0  # no overflow after a long night


def test_a_retried_failure_is_logged_without_the_advice_to_retry_that_a_stop_gives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A leader moving tells the operator of a one-shot command (replay, refresh) to retry
    in a moment; a command that retries by itself logged "...: retry in a moment;
    retrying in 2.0s". Its line now says the situation and when it tries again."""
    moved = broker_failure(KafkaError(KafkaError.NOT_COORDINATOR), None, "commit offsets")
    assert isinstance(moved, BrokerUnavailableError)
    assert str(moved).endswith("has moved a leader or coordinator: retry in a moment")
    outage = Outage("Kafka", Backoff(2.0, 10.0), clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="queuestream.retry"):
        assert outage.failed(moved) == 2.0
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("Kafka failed (attempt 1, failing for 0s): Kafka: could not commit")
    assert line.endswith("has moved a leader or coordinator; retrying in 2.0s")
    assert "retry in a moment" not in line


def test_a_zero_first_wait_still_waits_a_little() -> None:
    assert Backoff(first=0.0, maximum=1.0).delay(1) > 0


def test_each_failure_is_logged_with_its_next_wait_and_how_long_it_has_lasted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = Outage("the target database", Backoff(1.0, 10.0), clock=clock)
    waits: list[float] = []

    def attempt() -> str:
        if len(waits) < 3:
            msg = "connection refused"
            raise BrokerUnavailableError(msg)
        return "done"

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock.now += seconds
        return True

    with caplog.at_level(logging.INFO, logger="queuestream.retry"):
        assert retry(attempt, outage, wait) == "done"
    assert waits == [1.0, 2.0, 4.0]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "the target database failed (attempt 1, failing for 0s): connection refused; "
        "retrying in 1.0s"
    )
    assert "attempt 3, failing for 3s" in lines[2]
    assert lines[-1] == "the target database works again after 3 failed attempts over 7s"
    assert not outage.ongoing


def test_a_stop_during_the_wait_ends_without_another_attempt() -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        msg = "down"
        raise BrokerUnavailableError(msg)

    result = retry(attempt, Outage("x", Backoff(1, 1)), lambda _s: False)
    assert result is None
    assert calls == [1]


def test_permanent_errors_and_the_unless_list_pass_through_at_once() -> None:
    def permanent() -> None:
        msg = "bad setting"
        raise ConfigurationError(msg)

    with pytest.raises(ConfigurationError):
        retry(permanent, Outage("x", Backoff(1, 1)), lambda _s: True)

    def unknown() -> None:
        msg = "commit outcome unknown"
        raise CommitOutcomeUnknownError(msg)

    with pytest.raises(CommitOutcomeUnknownError):
        retry(
            unknown,
            Outage("x", Backoff(1, 1)),
            lambda _s: True,
            unless=(CommitOutcomeUnknownError,),
        )


def test_max_attempts_raises_the_last_error() -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        msg = f"down {len(calls)}"
        raise BrokerUnavailableError(msg)

    with pytest.raises(BrokerUnavailableError, match="down 3"):
        retry(attempt, Outage("x", Backoff(0, 0)), lambda _s: True, max_attempts=3)
    assert len(calls) == 3


def test_a_failure_met_once_stopped_is_not_retried_nor_said_to_be(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A command told to stop during an attempt (SIGTERM while the broker is down) gives
    up at its failure: no wait, no other attempt, and no "retrying in" that will not
    come, but one line saying it is not retried."""
    calls: list[int] = []
    waits: list[float] = []

    def attempt() -> None:
        calls.append(1)
        msg = "the broker does not answer"
        raise BrokerUnavailableError(msg)

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return True

    with caplog.at_level(logging.INFO, logger="queuestream.retry"):
        result = retry(attempt, Outage("publishing", Backoff(1, 1)), wait, stopped=lambda: True)
    assert result is None
    assert calls == [1]
    assert waits == []
    assert [r.getMessage() for r in caplog.records] == [
        "publishing failed: the broker does not answer; not retried, stopping"
    ]
