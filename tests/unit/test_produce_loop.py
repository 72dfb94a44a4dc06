"""The produce loop waits out outages (also at start-up) and stops on request."""

from __future__ import annotations

from typing import Any

from producer.refresh import ProduceLoop
from queuestream.errors import BrokerUnavailableError
from queuestream.retry import Backoff


class FakeRefresher:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[Any] = []
        self.closed = False

    def refresh(self, since: Any = None) -> list[Any]:
        self.calls.append(since)
        if self.failures:
            self.failures -= 1
            msg = "broker down"
            raise BrokerUnavailableError(msg)
        return []

    def close(self) -> None:
        self.closed = True


def test_broker_down_at_start_up_is_retried() -> None:
    attempts = []
    fake = FakeRefresher(failures=0)

    def make() -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            msg = "Kafka at 127.0.0.1:1 is unreachable"
            raise BrokerUnavailableError(msg)
        return fake

    loop = ProduceLoop(make, interval=0, backoff=Backoff(0.001, 0.01))
    assert loop.run(max_refreshes=2) == 2
    assert len(attempts) == 3
    assert fake.closed


def test_outage_during_refreshes_is_retried_and_since_applies_once() -> None:
    fake = FakeRefresher(failures=2)
    loop = ProduceLoop(lambda: fake, interval=0, backoff=Backoff(0.001, 0.01))
    assert loop.run(since="2017-01-01", max_refreshes=2) == 2  # type: ignore[arg-type]
    # the override is kept through the failed attempts and dropped after the first success
    assert fake.calls == ["2017-01-01", "2017-01-01", "2017-01-01", None]


def test_stop_ends_the_loop() -> None:
    fake = FakeRefresher(failures=0)
    loop = ProduceLoop(lambda: fake, interval=0)
    loop.stop()
    assert loop.run() == 0
    assert fake.calls == []
