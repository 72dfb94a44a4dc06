"""The produce loop waits out outages (also at start-up) and stops on request."""

from __future__ import annotations

from datetime import UTC, datetime

from producer.produce_loop import ProduceLoop
from producer.refresh import Refresher, RefreshResult
from producer.watermark import Progress
from queuestream.errors import BrokerUnavailableError
from queuestream.retry import Backoff


class FakeRefresher(Refresher):
    """A Refresher with no source and no broker: each refresh fails ``failures`` times."""

    def __init__(self, failures: int) -> None:  # no super().__init__: nothing to connect
        self.failures = failures
        self.calls: list[datetime | None] = []
        self.closed = False
        self.progress = Progress()

    def refresh(self, since: datetime | None = None) -> list[RefreshResult]:
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

    def make() -> Refresher:
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
    since = datetime(2017, 1, 1, tzinfo=UTC)
    assert loop.run(since=since, max_refreshes=2) == 2
    # the override is kept through the failed attempts and dropped after the first success
    assert fake.calls == [since, since, since, None]


def test_stop_ends_the_loop() -> None:
    fake = FakeRefresher(failures=0)
    loop = ProduceLoop(lambda: fake, interval=0)
    loop.stop()
    assert loop.run() == 0
    assert fake.calls == []
