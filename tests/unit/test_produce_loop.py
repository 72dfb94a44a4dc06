"""The produce loop waits out outages (also at start-up) and rows it cannot encode, and
stops on request."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from producer import produce_loop
from producer.produce_loop import SWEEP_SHARE, ProduceLoop
from producer.refresh import Refresher, RefreshResult
from producer.sweep import SweepReport, SweepStep
from producer.watermark import Progress
from queuestream.errors import BrokerUnavailableError, EncodingError, QueuestreamError
from queuestream.retry import Backoff
from tests.helpers import FakeClock


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


class _TimedRefresher(FakeRefresher):
    """Each refresh takes the next of ``durations`` seconds on ``clock``."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        super().__init__(failures=0)
        self.clock = clock
        self.durations = durations
        self.starts: list[float] = []

    def refresh(self, since: datetime | None = None) -> list[RefreshResult]:
        self.starts.append(self.clock.now)
        self.clock.now += self.durations[len(self.starts) - 1]
        return super().refresh(since)


def _timed_loop(
    monkeypatch: pytest.MonkeyPatch, durations: list[float], interval: float, **kw: Any
) -> tuple[ProduceLoop, _TimedRefresher, FakeClock]:
    clock = FakeClock(100.0)
    monkeypatch.setattr(time, "monotonic", clock.monotonic)  # the loop reads time.monotonic
    fake = _TimedRefresher(clock, durations)
    loop = ProduceLoop(lambda: fake, interval=interval, **kw)
    monkeypatch.setattr(loop._stop, "wait", clock.wait)
    return loop, fake, clock


def test_the_interval_runs_from_one_refresh_start_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh shorter than the interval waits for the rest of it; a longer one is
    followed at once (waiting a whole interval after it would only make the next longer)."""
    loop, fake, clock = _timed_loop(monkeypatch, [0.25, 1.5, 0.5, 0.0], interval=1.0)
    assert loop.run(max_refreshes=4) == 4
    assert fake.starts == [100.0, 101.0, 102.5, 103.5]
    assert clock.waits == [0.75, 0.0, 0.5]


class _Pass:
    """A sweep pass that is always due and never ends: each step asks for a 0.01 s pause."""

    made: ClassVar[list[_Pass]] = []

    def __init__(self, refresher: Refresher) -> None:
        self.refresher = refresher
        self.steps = 0
        _Pass.made.append(self)

    def due(self, every: float) -> bool:
        return True

    def step(self) -> SweepStep:
        self.steps += 1
        return SweepStep(table="orders", rows=0, events=0, pause=0.01)


def test_a_producer_at_its_limit_still_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refreshes as long as the interval leave no time between them: a due sweep pass
    still gets SWEEP_SHARE of the interval after each."""
    monkeypatch.setattr(produce_loop, "Sweeper", _Pass)
    loop, fake, _clock = _timed_loop(monkeypatch, [2.0, 2.0, 2.0], interval=2.0, sweep_every=60.0)
    assert loop.run(max_refreshes=3) == 3
    [sweeper] = _Pass.made
    assert sweeper.steps == 2 * 20  # 0.2 s after each of the first two refreshes
    gaps = [b - a - 2.0 for a, b in zip(fake.starts, fake.starts[1:], strict=False)]
    assert gaps == pytest.approx([2.0 * SWEEP_SHARE] * 2)


class _ShortPass(_Pass):
    """A sweep pass that is due and ends at its first step."""

    def step(self) -> SweepStep:
        self.steps += 1
        finished = SweepReport(started=datetime(2026, 12, 5, tzinfo=UTC))
        return SweepStep(table="orders", rows=0, events=0, pause=0.01, finished=finished)


def test_a_pass_that_ends_early_does_not_hold_the_next_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(produce_loop, "Sweeper", _ShortPass)
    loop, fake, _clock = _timed_loop(monkeypatch, [2.0, 2.0, 2.0], interval=2.0, sweep_every=60.0)
    assert loop.run(max_refreshes=3) == 3
    gaps = [b - a - 2.0 for a, b in zip(fake.starts, fake.starts[1:], strict=False)]
    assert gaps == pytest.approx([0.0, 0.0])
