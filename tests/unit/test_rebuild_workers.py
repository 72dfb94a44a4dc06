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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers import rebuild as rebuild_module
from consumers.batch_apply import BatchOutcome
from consumers.rebuild import RebuildPlan, usable_cores, workers_for
from consumers.rebuild_workers import run_shares, shares_of
from consumers.runtime import RunStats, StopAt
from consumers.sync_log import UNDECODABLE, SyncEntry
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
    monkeypatch.setattr(rebuild_module, "_CPU_MAX", "/nonexistent/cpu.max")
    pg = "postgresql+psycopg://u@h/db"
    per = rebuild_module.EVENTS_PER_WORKER
    assert workers_for(_plan(pg, per - 1)) == 1  # too little to pay for a process
    assert workers_for(_plan(pg, 2 * per)) == 2
    assert workers_for(_plan(pg, 100 * per)) == 4  # one per core
    assert workers_for(_plan(pg, 100 * per, partitions=3)) == 3  # one per partition number
    assert workers_for(_plan(pg, 10, partitions=3), 2) == 2  # asked
    assert workers_for(_plan(pg, 10, partitions=3), 5) == 3
    assert workers_for(_plan("sqlite:///x.db", 100 * per), 4) == 1  # a single writer


def test_cores_in_a_container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cgroup's CPU quota counts, not the machine's cores; and never more than 8 at once."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(rebuild_module, "_CPU_MAX", str(cpu_max))
    pg = "postgresql+psycopg://u@h/db"
    many = 100 * rebuild_module.EVENTS_PER_WORKER
    cpu_max.write_text("150000 100000\n")  # a core and a half
    assert usable_cores() == 2
    assert workers_for(_plan(pg, many, partitions=12)) == 2
    cpu_max.write_text("max 100000\n")
    assert usable_cores() == 64
    assert workers_for(_plan(pg, many, partitions=12)) == rebuild_module.MOST_WORKERS == 8


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
    assert on_batch is not None
    for refresh_id in ("r1", "r2"):
        for p in numbers:
            on_batch(_outcome(refresh_id, p))
    on_batch(BatchOutcome([SyncEntry(UNDECODABLE, errors=1)], 0.01))  # no refresh: a dead letter
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


def fails_late_beside_a_slow_one(
    _settings: Settings,
    stop_at: StopAt,
    _stop: threading.Event,
    _on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    """Share 0 ends at once; share 1 fails after a second; share 2 works for a minute,
    heeding no stop (a batch that takes long)."""
    numbers = {p for _, p in stop_at.offsets}
    if 1 in numbers:
        time.sleep(1.0)
        msg = "share 1 failed"
        raise ConfigurationError(msg)
    if 2 in numbers:
        time.sleep(60)
    return RunStats(batches=1)


def stops_when_asked(
    _settings: Settings,
    stop_at: StopAt,
    stop: threading.Event,
    _on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    """Works until stopped (at most a minute); says where it is in a file when asked to."""
    stopped = stop.wait(60)
    marker = os.environ.get("QS_TEST_STOPPED_DIR")
    if marker and stopped:
        numbers = sorted({p for _, p in stop_at.offsets})
        (Path(marker) / f"stopped-{numbers[0]}").write_text(str(os.getpid()))
    return RunStats(batches=1, rows=1 if stopped else 0)


class _Unpicklable:
    def __reduce__(self) -> str:
        msg = "cannot be pickled"
        raise TypeError(msg)


def logs_what_cannot_cross(
    _settings: Settings,
    stop_at: StopAt,
    _stop: threading.Event,
    _on_batch: Callable[[BatchOutcome], None] | None,
) -> RunStats:
    logging.getLogger("consumers.test").warning("with extra", extra={"thing": _Unpicklable()})
    logging.getLogger("consumers.test").warning("and after it")
    return RunStats(rows=len({p for _, p in stop_at.offsets}))


def test_a_log_record_that_cannot_be_pickled_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    stats = run_shares(_settings(), shares_of(_stop(), 2), logs_what_cannot_cross)
    assert stats.rows == 6
    lines = [r.getMessage() for r in caplog.records if r.name == "consumers.test"]
    assert "worker 2 of 2: with extra" in lines
    assert "worker 2 of 2: and after it" in lines


def test_the_shares_run_in_processes_and_report_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    batches: list[BatchOutcome] = []
    stats = run_shares(
        _settings(), shares_of(_stop(), 3), applies_its_share, on_batch=batches.append
    )
    # Every share ran, two of them elsewhere; a refresh counts once, however many applied it,
    # and a batch of undecodable events alone is no refresh.
    assert stats.rows == 6
    assert stats.batches == 6
    assert stats.refreshes == 2
    assert stats.counts == {f"p{p}": 1 for p in range(6)}
    refreshes = [o.entries[0] for o in batches if o.entries[0].is_refresh]
    assert sorted((e.refresh_id, e.rows_applied) for e in refreshes) == sorted(
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
    with pytest.raises(
        QueuestreamError,
        match=r"worker 2 of 2 \(partitions 1, 3, 5\) ended without a result \(exit code 3\)",
    ):
        run_shares(_settings(), shares_of(_stop(), 2), dies)


def test_a_failure_stops_the_others_at_once() -> None:
    """Share 1's error is raised, without waiting for share 2's minute of work."""
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="share 1 failed"):
        run_shares(_settings(), shares_of(_stop(), 3), fails_late_beside_a_slow_one)
    assert time.monotonic() - started < 30


def test_a_progress_callback_that_fails_fails_the_rebuild() -> None:
    """Nothing can report a rebuild done that lost the news of a share."""

    def broken(_outcome: BatchOutcome) -> None:
        msg = "the progress bar broke"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="progress bar broke"):
        run_shares(_settings(), shares_of(_stop(), 2), applies_its_share, on_batch=broken)


def test_asked_to_stop_every_share_stops_and_nothing_is_raised() -> None:
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    stats = run_shares(_settings(), shares_of(_stop(), 3), stops_when_asked, stop=stop)
    assert stats.rows == 3  # each share saw the stop and ended by itself
    assert stats.batches == 3


def test_workers_stop_by_themselves_when_the_rebuild_process_dies(tmp_path: Path) -> None:
    """A rebuild killed (SIGKILL, the OOM killer) leaves no worker applying on its own."""
    script = (
        "import sys\n"
        "from tests.unit.test_rebuild_workers import _settings, _stop, stops_when_asked\n"
        "from consumers.rebuild_workers import run_shares, shares_of\n"
        "if __name__ == '__main__':\n"
        "    run_shares(_settings(), shares_of(_stop(), 3), stops_when_asked)\n"
    )
    env = {**os.environ, "QS_TEST_STOPPED_DIR": str(tmp_path)}
    (tmp_path / "run.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], env=env, cwd=os.getcwd())
    try:
        time.sleep(3.0)  # the workers have started (spawned: their imports take ~1 s)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(tmp_path.glob("stopped-*"))) < 2:
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
    # Shares 1 and 2 ran in workers; each saw its rebuild gone and stopped.
    assert sorted(p.name for p in tmp_path.glob("stopped-*")) == ["stopped-1", "stopped-2"]


def test_a_worker_loads_neither_the_source_models_nor_the_orm() -> None:
    """What a consumer and each rebuild worker import to apply events leaves out the sync
    database's ORM models and SQLAlchemy's ORM (about 0.1 s of CPU at every start, on a
    worker that starts while the first one works): only ``verify`` reads the source
    tables, and imports them then (consumers/reconcile.py, ``source_table``)."""
    code = (
        "import sys, consumers.rebuild, consumers.accounting.target, "
        "consumers.shipping.target; "
        "print(sorted(m for m in ('sqlalchemy.orm', 'queuestream.sync_schema') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
