"""A rebuild split across processes (consumers/rebuild_workers.py, consumers/rebuild.py).

The shares must cover every partition exactly once, and the processes must bring
back what each did (figures, batches, log lines) and the first failure. The shares
here are run by stand-ins (no Kafka, no database) in real spawned processes; the
rebuild itself, split in two against a real broker and PostgreSQL, is in
tests/integration/test_rebuild.py.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from consumers import rebuild as rebuild_module
from consumers.batch_apply import BatchOutcome
from consumers.rebuild import RebuildPlan, workers_for
from consumers.rebuild_workers import run_shares, shares_of
from consumers.runtime import RunStats, StopAt
from consumers.sync_log import SyncEntry
from queuestream.errors import ConfigurationError, QueuestreamError
from queuestream.settings import Settings, load_settings

TOPICS = ("t.customers", "t.orders", "t.order_details", "t.payments")


def _stop(partitions: int = 6) -> StopAt:
    offsets = {(t, p): 100 * i + p for i, t in enumerate(TOPICS) for p in range(partitions)}
    return StopAt(offsets=offsets, until_ms=1_234, markers_end=56)


def _plan(url: str, events: int, partitions: int = 6) -> RebuildPlan:
    return RebuildPlan("accounting", url, datetime.now(UTC), _stop(partitions), events)


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 6])
def test_the_shares_cover_every_partition_once(workers: int) -> None:
    stop = _stop()
    shares = shares_of(stop, workers)
    assert len(shares) == workers
    seen: dict[tuple[str, int], int] = {}
    for share in shares:
        assert share.stop.until_ms == stop.until_ms
        assert share.stop.markers_end == stop.markers_end
        # A customer's events share one partition number in every topic: a share
        # holds a partition number in all of them or in none.
        assert {p for _, p in share.stop.offsets} == set(share.partitions)
        assert len(share.stop.offsets) == len(TOPICS) * len(share.partitions)
        for tp, offset in share.stop.offsets.items():
            assert tp not in seen
            seen[tp] = offset
    assert seen == stop.offsets


def test_no_more_shares_than_partition_numbers() -> None:
    assert len(shares_of(_stop(partitions=3), 8)) == 3


def test_how_many_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    pg = "postgresql+psycopg://u@h/db"
    per = rebuild_module.EVENTS_PER_WORKER
    assert workers_for(_plan(pg, per - 1)) == 1  # too little to pay for a process
    assert workers_for(_plan(pg, 2 * per)) == 2
    assert workers_for(_plan(pg, 100 * per)) == 4  # one per core
    assert workers_for(_plan(pg, 100 * per, partitions=3)) == 3  # one per partition number
    assert workers_for(_plan(pg, 10, partitions=3), 2) == 2  # asked
    assert workers_for(_plan(pg, 10, partitions=3), 5) == 3
    assert workers_for(_plan("sqlite:///x.db", 100 * per), 4) == 1  # a single writer


# -- stand-ins for a share's runtime: importable by name, as the spawned processes need --
def _settings() -> Settings:
    return load_settings(source_url="sqlite://", topic_prefix="t")


def _outcome(refresh_id: str, partition: int) -> BatchOutcome:
    return BatchOutcome([SyncEntry(refresh_id, rows_applied=partition + 1)], 0.01)


def applies_its_share(
    _settings: Settings,
    stop_at: StopAt,
    _stop: threading.Event,
    on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    """Two refreshes on each partition it owns; a row and a count for each partition."""
    numbers = sorted({p for _, p in stop_at.offsets})
    logging.getLogger("consumers.test").warning(
        "share of partitions %s in %d", numbers, os.getpid()
    )
    for refresh_id in ("r1", "r2"):
        for p in numbers:
            assert on_batch is not None
            on_batch(_outcome(refresh_id, p))
    return RunStats(batches=2, rows=len(numbers), counts={f"p{p}": 1 for p in numbers})


def fails_on_partition_1(
    settings: Settings,
    stop_at: StopAt,
    stop: threading.Event,
    on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    if 1 in {p for _, p in stop_at.offsets}:
        msg = "the target refused worker of partition 1"
        raise ConfigurationError(msg)
    stop.wait(60)  # the share in this process: stopped by the other's failure
    return applies_its_share(settings, stop_at, stop, on_batch)


def dies(
    settings: Settings,
    stop_at: StopAt,
    stop: threading.Event,
    on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    if 0 not in {p for _, p in stop_at.offsets}:
        os._exit(3)
    stop.wait(60)
    return applies_its_share(settings, stop_at, stop, on_batch)


def test_the_shares_run_in_processes_and_report_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    batches: list[BatchOutcome] = []
    stats = run_shares(
        _settings(), shares_of(_stop(), 3), applies_its_share, on_batch=batches.append
    )
    # Every share ran, two of them elsewhere; a refresh counts once, however many applied it.
    assert stats.rows == 6
    assert stats.batches == 6
    assert stats.refreshes == 2
    assert stats.counts == {f"p{p}": 1 for p in range(6)}
    assert sorted((o.entries[0].refresh_id, o.entries[0].rows_applied) for o in batches) == sorted(
        (r, p + 1) for r in ("r1", "r2") for p in range(6)
    )
    # Each share's log line reached this process's handlers, with its logger's name.
    lines = [r.getMessage() for r in caplog.records if r.name == "consumers.test"]
    assert len(lines) == 3
    assert len({line.rsplit(" in ", 1)[1] for line in lines}) == 3  # three processes


def test_a_failing_share_fails_the_rebuild_with_its_error() -> None:
    with pytest.raises(ConfigurationError, match="refused worker of partition 1"):
        run_shares(_settings(), shares_of(_stop(), 2), fails_on_partition_1)


def test_a_share_that_dies_fails_the_rebuild() -> None:
    with pytest.raises(QueuestreamError, match=r"worker 2 ended without a result \(exit code 3\)"):
        run_shares(_settings(), shares_of(_stop(), 2), dies)
