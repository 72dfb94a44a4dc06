"""The phases of bench/sweep.py, each run in a fresh process with its own peak RSS.

A phase (one refresh, one sweep pass, one rebuild of the published state) runs in
a process started for it (multiprocessing, spawn), so its peak RSS (``VmHWM``
from /proc, like bench/soak.py: Linux only) is its own and not what earlier
phases left behind; :class:`PhaseMemory` also gives the RSS the phase started
from (after imports and set-up) and the growth during it.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.errors import BenchError, Deadline
from bench.source import timed_refresh
from producer.published_state import PublishedState, state_path
from producer.refresh import Refresher
from producer.sweep import Sweeper
from queuestream.settings import Settings

__all__ = [
    "UNTHROTTLED",
    "PhaseMemory",
    "cache_mb",
    "in_fresh_process",
    "rebuild_phase",
    "refresh_phase",
    "sweep_phase",
]

#: The sweep's rate limit here: no pause between steps.
UNTHROTTLED = 1e12


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    msg = f"/proc/self/status has no {field} (the benchmark measures RSS on Linux only)"
    raise BenchError(msg)


class PhaseMemory:
    """The RSS a phase starts from, then its process's peak and the growth during it."""

    def __init__(self) -> None:
        self.before = _memory_mb("VmRSS")

    def figures(self) -> dict[str, float]:
        peak = _memory_mb("VmHWM")
        return {
            "rss_before_mb": round(self.before, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_growth_mb": round(peak - self.before, 1),
        }


def _child(send: Connection, verbose: bool, target: Callable[..., Any], *args: Any) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        send.send(("ok", target(*args)))
    except BaseException as exc:  # reported to the parent, which raises BenchError
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


def in_fresh_process(
    doing: str, deadline: Deadline, verbose: bool, target: Callable[..., Any], *args: Any
) -> Any:
    """``target(*args)`` in a new process; its result. Stopped at the deadline."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, verbose, target, *args))
    process.start()
    send.close()
    try:
        if not receive.poll(max(deadline.left(), 0.0)):
            msg = f"--timeout {deadline.seconds:g}s reached while {doing}"
            raise BenchError(msg)
        status, value = receive.recv()
        process.join(30)  # it has sent its result: let it end by itself
    except EOFError:
        process.join(10)
        msg = f"{doing}: the process ended without a result (exit code {process.exitcode})"
        raise BenchError(msg) from None
    finally:
        receive.close()
        if process.is_alive():  # past the deadline, or stuck ending
            process.terminate()
            process.join(10)
    if status != "ok":
        msg = f"{doing} failed: {value}"
        raise BenchError(msg)
    return value


def refresh_phase(settings: Settings) -> dict[str, Any]:
    memory = PhaseMemory()
    result, seconds = timed_refresh(settings)
    return {
        "events": result.events,
        "seconds": seconds,
        "counts": dict(result.counts),
        "refresh_id": result.refresh_id,
        "watermark": result.window_end,
        **memory.figures(),
    }


def sweep_phase(settings: Settings) -> dict[str, Any]:
    refresher = Refresher(settings)
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
