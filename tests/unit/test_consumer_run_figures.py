"""The figures a consumer's run reports, whichever way the run ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from queuestream.errors import DatabaseUnavailableError
from queuestream.settings import load_settings

#: The first wait between attempts on the target database (seconds).
_BACKOFF = 0.2


def test_a_run_stopped_while_its_target_is_down_reports_the_time_it_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``consume --until-idle`` stopped while it waited for its target printed "(0.0s)":
    the early return skipped setting the run's seconds."""
    from consumers import target_db, target_named
    from consumers.runtime import ConsumerRuntime

    settings = load_settings(
        None,
        target_url=f"sqlite:///{tmp_path / 'shipping.db'}",
        retry_backoff_seconds=_BACKOFF,
        target_retry_max_seconds=_BACKOFF,
    )
    stop = threading.Event()
    attempts: list[float] = []

    def target_down(*_: object) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 2:  # the operator gives up after a wait
            stop.set()
        msg = "the target database is down"
        raise DatabaseUnavailableError(msg)

    monkeypatch.setattr(target_db, "prepare", target_down)
    runtime = ConsumerRuntime(settings, target_named("shipping"), until_idle=True, stop=stop)
    stats = runtime.run()
    assert len(attempts) == 2
    assert stats.outages == 1
    assert stats.seconds >= attempts[1] - attempts[0] >= _BACKOFF
