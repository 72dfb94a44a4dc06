"""The benchmarks' memory figures count the processes the work starts (a producer's row
reader): a child holding 64 MB shows in them, and still does once it has gone."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.rss import FamilyPeak, PhaseMemory, children

_HOLD = (
    "import sys, time\n"
    "block = bytearray(64 * 1024 * 1024)\n"
    "block[::4096] = b'x' * len(block[::4096])\n"  # touched: resident
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def _holding_child() -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "held\n"
    return child


def _release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(10)


def test_a_started_process_counts_with_its_peak_after_it_has_gone() -> None:
    family = FamilyPeak()
    child = _holding_child()
    try:
        assert child.pid in children()
        family.sample()
    finally:
        _release(child)
    family.sample()  # gone now: its last reading stays
    assert family.helpers_mb() >= 64
    assert family.total_mb() >= family.helpers_mb() + 1  # this process counts too


def test_a_phase_reports_the_processes_it_started() -> None:
    memory = PhaseMemory()
    child = _holding_child()
    try:
        time.sleep(3 * PhaseMemory.HELPERS_EVERY)
    finally:
        _release(child)
    figures = memory.figures()
    assert figures["helpers_peak_rss_mb"] >= 64
    assert figures["total_peak_rss_mb"] == round(
        figures["peak_rss_mb"] + figures["helpers_peak_rss_mb"], 1
    )
