"""Promise 7, point-in-time rebuild: a fresh target built as of T equals the target at T.

A target is captured at T1 (every table, row by row, and its stored offsets), the
producer goes on and the target moves on; ``queuestream rebuild --as-of T1`` into a
new database must give exactly the captured content. Then the rebuilt target
continues with the ordinary consumer and catches up with the source.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.rss import children
from tests.helpers import cli_env, run_cli, start_cli, stop_gracefully, wait_for
from tests.integration.pipeline import Pipeline, stored_offsets, target_content


def _rebuild(
    pipe: Pipeline, target: str, url: str, as_of: str, *more: str
) -> subprocess.CompletedProcess[str]:
    args = ["rebuild", target, "--target", url, "--as-of", as_of, *more]
    return run_cli(args, cli_env(pipe.bootstrap, pipe.prefix))


@pytest.mark.parametrize("target", ["accounting", "shipping"])
@pytest.mark.parametrize(
    "workers",
    [
        pytest.param(1, id="sqlite-one-process"),
        # Split by partition number, the two processes' shares make the whole target.
        pytest.param(2, id="postgres-two-processes", marks=pytest.mark.postgres),
    ],
)
@pytest.mark.slow
def test_rebuild_as_of_equals_the_target_captured_then(
    pipeline: Pipeline, request: pytest.FixtureRequest, tmp_path: Path, target: str, workers: int
) -> None:
    def database(name: str) -> str:
        if workers == 1:  # a SQLite target takes one writer
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        make: Callable[[str], str] = request.getfixturevalue("postgres_database")
        return make(name)

    live = database("live")
    pipeline.simulate(120)
    pipeline.refresh()
    pipeline.simulate(120)
    pipeline.refresh()
    pipeline.consume(target, live)
    time.sleep(0.05)
    t1 = datetime.now(UTC)
    captured = target_content(live)
    captured_offsets = stored_offsets(live, target)
    time.sleep(0.05)

    # The producer goes on; the live target moves past T1.
    pipeline.simulate(120)
    pipeline.refresh()
    pipeline.consume(target, live)
    assert target_content(live) != captured, (
        "nothing changed after T1: the test would prove nothing"
    )

    rebuilt = database("rebuilt")
    done = _rebuild(pipeline, target, rebuilt, t1.isoformat(), "--workers", str(workers))
    assert done.returncode == 0, done.stderr
    assert f"{workers} process" in done.stdout
    assert "2 refreshes" in done.stdout  # each once, however many processes applied it
    # Each process applied its share, and wrote its own sync log rows.
    assert len({row["member"] for row in pipeline.sync_log(target, rebuilt)}) == workers
    assert target_content(rebuilt) == captured
    assert stored_offsets(rebuilt, target) == captured_offsets

    # Switching over: the ordinary consumer goes on from T1 and catches up.
    pipeline.consume(target, rebuilt)
    assert pipeline.verify(target, rebuilt).ok
    assert target_content(rebuilt) == target_content(live)


@pytest.mark.postgres
def test_a_rebuild_stopped_by_sigterm_stops_its_workers_and_says_so(
    pipeline: Pipeline, postgres_database: Callable[[str], str]
) -> None:
    for _ in range(2):
        pipeline.simulate(150)
        pipeline.refresh()
    rebuilt = postgres_database("rebuilt")
    as_of = datetime.now(UTC).isoformat()
    args = ["rebuild", "accounting", "--target", rebuilt, "--as-of", as_of, "--workers", "2"]
    process = start_cli(args, cli_env(pipeline.bootstrap, pipeline.prefix))
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # printed once SIGTERM is handled, before the workers
        assert "2 processes" in first, first
        workers = wait_for(
            lambda: _workers_started(process.pid), timeout=30, message="the rebuild's workers"
        )
        assert stop_gracefully(process, 60), "the rebuild did not stop"
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, err
    assert "stopped before the end" in err
    assert "rebuild into a new, empty database" in err
    wait_for(
        lambda: not [pid for pid in workers if Path(f"/proc/{pid}").exists()],
        timeout=15,
        message="no worker outliving the rebuild",
    )


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone meanwhile


def _workers_started(pid: int) -> list[int]:
    """The processes ``pid`` started, once a worker is among them (beside
    multiprocessing's resource tracker); none before. Threads and processes that end
    while ``/proc`` is read are skipped by :func:`bench.rss.children`."""
    found = children(pid)
    return found if any(b"spawn_main" in _cmdline(c) for c in found) else []


def test_rebuild_refuses_a_database_that_holds_a_target(pipeline: Pipeline, tmp_path: Path) -> None:
    live = f"sqlite:///{tmp_path / 'live.db'}"
    pipeline.simulate(30)
    pipeline.refresh()
    pipeline.consume("accounting", live)
    done = _rebuild(pipeline, "accounting", live, "2020-01-01T00:00Z")
    assert done.returncode == 1
    assert "new, empty database" in done.stderr
