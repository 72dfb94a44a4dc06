"""The produce loop waits out outages (also at start-up) and rows it cannot encode, and
stops on request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from producer.produce_loop import ProduceLoop
from producer.refresh import Refresher, RefreshResult
from producer.watermark import Progress
from queuestream.errors import BrokerUnavailableError, EncodingError, QueuestreamError
from queuestream.retry import Backoff


class FakeRefresher(Refresher):
    """A Refresher with no source and no broker: each refresh fails ``failures`` times."""

    def __init__(self, failures: int, error: QueuestreamError | None = None) -> None:
        # no super().__init__: nothing to connect
        self.failures = failures
        self.error = error or BrokerUnavailableError("broker down")
        self.calls: list[datetime | None] = []
        self.reports: list[EncodingError | None] = []
        self.closed = False
        self.progress = Progress()

    def refresh(self, since: datetime | None = None) -> list[RefreshResult]:
        self.calls.append(since)
        if self.failures:
            self.failures -= 1
            raise self.error
        return []

    def report(self, stuck_on: EncodingError | None, sweep: dict[str, Any] | None = None) -> None:
        self.reports.append(stuck_on)

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


def test_a_row_that_cannot_be_encoded_holds_the_feed_without_ending_the_loop() -> None:
    bad = EncodingError(
        "NaN is not a number", table="payments", key={"PaymentID": 7}, column="Amount"
    )
    fake = FakeRefresher(failures=3, error=bad)
    made = []

    def make() -> Refresher:
        made.append(1)
        return fake

    loop = ProduceLoop(make, interval=0, backoff=Backoff(0.001, 0.01))
    assert loop.run(max_refreshes=2) == 2
    assert len(fake.calls) == 5  # three attempts held by the row, then two refreshes
    assert made == [1]  # nothing was committed or left open: the refresher is kept
    # The status topic hears of the row once (not on every attempt), then of the recovery.
    assert fake.reports == [bad, None]
