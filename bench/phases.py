"""Work run in a fresh process, so that its peak RSS is its own: the runner, one refresh.

A phase (one refresh, one consumer run, one rebuild, one sweep pass) runs in a
process started for it (multiprocessing, spawn), so its peak RSS (``VmHWM``,
:mod:`bench.rss`) is that work's and not what the benchmark's own process or
earlier phases left behind. A phase is a module-level function (spawn imports it
by name) that makes a :class:`~bench.rss.PhaseMemory` after its set-up and
returns a dict with ``**memory.figures()``; :func:`in_fresh_process` runs it and
hands the dict back. :func:`refresh_phase` is the one several benchmarks share.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.errors import BenchError, Deadline
from bench.rss import PhaseMemory
from bench.source import timed_refresh
from queuestream.gc_tuning import tune_for_streaming
from queuestream.settings import Settings

__all__ = ["in_fresh_process", "refresh_phase"]


def _child(send: Connection, verbose: bool, target: Callable[..., Any], *args: Any) -> None:
    tune_for_streaming()  # as the commands measured do (queuestream.cli.main)
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
        if process.is_alive():  # past the deadline, stuck ending, or interrupted
            process.terminate()
            process.join(10)
    if status != "ok":
        msg = f"{doing} failed: {value}"
        raise BenchError(msg)
    return value


def refresh_phase(settings: Settings) -> dict[str, Any]:
    """One timed refresh (:func:`bench.source.timed_refresh`) with its process's memory
    and the CPU it took."""
    memory = PhaseMemory()
    timed = timed_refresh(settings)
    result = timed.result
    return {
        "events": result.events,
        "seconds": timed.seconds,
        "cpu_seconds": timed.cpu_seconds,
        "reader_cpu_seconds": timed.reader_cpu_seconds,
        "machine_cpu_seconds": timed.machine.busy,
        "steal_seconds": timed.machine.steal,
        "broker_cpu_seconds": timed.services.get("broker"),
        "postgres_cpu_seconds": timed.services.get("postgres"),
        "counts": dict(result.counts),
        "refresh_id": result.refresh_id,
        "watermark": result.window_end,
        **memory.figures(),
    }
