"""Resident memory of the process that does a benchmark's work: now, and its peak.

Every benchmark reports the peak RSS of the process that did the work (issue 10):
``VmHWM`` from ``/proc/<pid>/status`` (Linux only), the kernel's own high-water
mark, so nothing between two samples is missed. Work run in the benchmark's own
process takes a fresh one for it (:func:`bench.phases.in_fresh_process`) and
measures itself with :class:`PhaseMemory`; a command run as a child process
(bench/freshness.py) is read by its pid with :func:`peak_rss_mb` while it lives.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError

__all__ = ["PhaseMemory", "peak_rss_mb", "rss_mb", "status_mb"]


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
    if "\nState:\tZ" in text:
        return None  # a zombie has no memory left to report
    msg = f"{where} has no {field} (the benchmarks measure RSS on Linux only)"
    raise BenchError(msg)


def rss_mb(pid: int | None = None) -> float | None:
    """The resident memory of ``pid`` (this process when None) now, in MB."""
    return status_mb("VmRSS", pid)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """The peak resident memory of ``pid`` (this process when None) so far, in MB."""
    return status_mb("VmHWM", pid)


class PhaseMemory:
    """The RSS a phase starts from, then its process's peak and the growth during it.

    Made in the process doing the work, after its imports and set-up::

        memory = PhaseMemory()
        ...  # the work
        return {..., **memory.figures()}
    """

    def __init__(self) -> None:
        self.before = _own("VmRSS")

    def figures(self) -> dict[str, float]:
        """``rss_before_mb``, ``peak_rss_mb`` and ``rss_growth_mb`` (peak over before)."""
        peak = _own("VmHWM")
        return {
            "rss_before_mb": round(self.before, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_growth_mb": round(peak - self.before, 1),
        }


def _own(field: str) -> float:
    found = status_mb(field)
    assert found is not None  # this process is alive
    return found
