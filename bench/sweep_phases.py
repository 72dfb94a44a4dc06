"""The phases of bench/sweep.py of its own: a sweep pass, the published state rebuilt.

Each runs in a fresh process (:func:`bench.phases.in_fresh_process`, like the
refresh before them, :func:`bench.phases.refresh_phase`), so its peak RSS
(``VmHWM``, :mod:`bench.rss`) is its own and not what earlier phases left
behind; :class:`~bench.rss.PhaseMemory` also gives the RSS the phase started
from (after imports and set-up) and the growth during it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.rss import PhaseMemory
from producer.published_state import PublishedState, state_path
from producer.refresh import Refresher
from producer.sweep import Sweeper
from queuestream.settings import Settings

__all__ = ["UNTHROTTLED", "cache_mb", "rebuild_phase", "sweep_phase"]

#: The sweep's rate limit here: no pause between steps.
UNTHROTTLED = 1e12


def sweep_phase(settings: Settings) -> dict[str, Any]:
    refresher = Refresher(settings.model_copy(update={"reader_process": False}))  # as the CLI
    try:
        sweeper = Sweeper(refresher, max_rows_per_second=UNTHROTTLED)
        events: list[int] = []
        memory = PhaseMemory()
        started = time.perf_counter()
        report = sweeper.run_pass(lambda step: events.append(step.events))
        seconds = time.perf_counter() - started
        figures = memory.figures()
    finally:
        refresher.close()
    return {
        "seconds": seconds,
        "rows": report.total("checked"),
        "events": sum(events),
        "steps": len(events),
        "chunk": sweeper.chunk,
        "findings": report.findings,
        **figures,
    }


def rebuild_phase(settings: Settings, refresh_id: str) -> dict[str, Any]:
    path = state_path(settings)
    path.unlink()  # raises when the refresh left no cache there
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    memory = PhaseMemory()
    started = time.perf_counter()
    state = PublishedState.open(settings, refresh_id)
    seconds = time.perf_counter() - started
    figures = memory.figures()
    try:
        rows = state.size()
    finally:
        state.close()
    return {"seconds": seconds, "rows": rows, "cache_mb": cache_mb(path), **figures}


def cache_mb(path: Path) -> float:
    """The cache on disk: the SQLite file and its write-ahead log."""
    files = (Path(f"{path}{suffix}") for suffix in ("", "-wal"))
    return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 1)
