"""Resident memory of the process that does a benchmark's work: now, and its peak.

Every benchmark reports the peak RSS of the process that did the work (issue 10):
``VmHWM`` from ``/proc/<pid>/status`` (Linux only), the kernel's own high-water
mark, so nothing between two samples is missed. Work run in the benchmark's own
process takes a fresh one for it (:func:`bench.phases.in_fresh_process`) and
measures itself with :class:`PhaseMemory`; a command run as a child process
(bench/freshness.py) is read by its pid with :func:`peak_rss_mb` while it lives.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from bench.errors import BenchError

__all__ = ["FamilyPeak", "PhaseMemory", "children", "peak_rss_mb", "rss_mb", "status_mb"]


def status_mb(field: str, pid: int | None = None) -> float | None:
    """``field`` (``VmRSS``, ``VmHWM``) of process ``pid`` (this one when None), in MB.

    None when that process has gone; BenchError when /proc has no such field.
    """
    where = Path(f"/proc/{'self' if pid is None else pid}/status")
    try:
        text = where.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    if "\nVmSize:" not in text:
        return None  # exiting: its memory is gone already (a zombie, or on its way there)
    msg = f"{where} has no {field} (the benchmarks measure RSS on Linux only)"
    raise BenchError(msg)


def rss_mb(pid: int | None = None) -> float | None:
    """The resident memory of ``pid`` (this process when None) now, in MB."""
    return status_mb("VmRSS", pid)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """The peak resident memory of ``pid`` (this process when None) so far, in MB."""
    return status_mb("VmHWM", pid)


def children(pid: int | None = None) -> list[int]:
    """The live processes ``pid`` (this one when None) started, and theirs in turn."""
    found: list[int] = []
    todo = ["self" if pid is None else str(pid)]
    while todo:
        tasks = Path(f"/proc/{todo.pop()}/task")
        try:
            names = [t / "children" for t in tasks.iterdir()]
        except OSError:
            continue  # gone meanwhile
        for name in names:
            try:
                kids = [int(k) for k in name.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += [str(k) for k in kids]
    return found


class FamilyPeak:
    """The peak RSS of a process and of the processes it started (a producer's row
    reader): each one's ``VmHWM`` read at every :meth:`sample`, its last reading kept
    (VmHWM only grows), so one that has gone still counts with its peak."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.peaks: dict[int, float] = {}

    def sample(self) -> None:
        for pid in [self.pid, *children(self.pid)]:
            peak = peak_rss_mb(pid)  # None for one on its way out: its last reading stands
            if peak is not None:
                self.peaks[os.getpid() if pid is None else pid] = peak

    def total_mb(self) -> float:
        """The processes' peaks added up: what the work held at most, bounded above."""
        return round(sum(self.peaks.values()), 1)

    def helpers_mb(self) -> float:
        """The started processes' peaks alone."""
        own = os.getpid() if self.pid is None else self.pid
        return round(sum(v for k, v in self.peaks.items() if k != own), 1)


class PhaseMemory:
    """The RSS a phase starts from, then its process's peak and the growth during it.

    Made in the process doing the work, after its imports and set-up::

        memory = PhaseMemory()
        ...  # the work
        return {..., **memory.figures()}
    """

    #: Seconds between two readings of the processes the work starts (a producer's row
    #: reader): each lives while the work runs, and its peak is its last reading.
    HELPERS_EVERY = 0.1

    def __init__(self) -> None:
        self.before = _own("VmRSS")
        self._helpers = FamilyPeak()
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._sample, name="phase-memory", daemon=True)
        self._watch.start()

    def _sample(self) -> None:
        while not self._done.wait(self.HELPERS_EVERY):
            self._helpers.sample()

    def figures(self) -> dict[str, float]:
        """``rss_before_mb``, ``peak_rss_mb`` and ``rss_growth_mb`` (peak over before) of
        this process; ``helpers_peak_rss_mb``, the peaks of the processes it started for
        the work (a producer's row reader), and ``total_peak_rss_mb``, both added up."""
        self._done.set()
        self._watch.join()
        peak = _own("VmHWM")
        helpers = self._helpers.helpers_mb()
        return {
            "rss_before_mb": round(self.before, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_growth_mb": round(peak - self.before, 1),
            "helpers_peak_rss_mb": helpers,
            "total_peak_rss_mb": round(peak + helpers, 1),
        }


def _own(field: str) -> float:
    found = status_mb(field)
    assert found is not None  # this process is alive
    return found
