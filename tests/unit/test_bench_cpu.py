"""The producer benchmark's CPU figures: another process's CPU time read from /proc (the
row reader's) counts what it spent, and not what it only waited."""

from __future__ import annotations

import subprocess
import sys

from bench.source import machine_cpu, process_cpu_seconds

_BURN_THEN_WAIT = (
    "import sys, time\n"
    "end = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_another_process_cpu_time_counts_its_work_not_its_waits() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _BURN_THEN_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "burnt\n"
        burnt = process_cpu_seconds(child.pid)
        assert burnt is not None
        assert 0.45 <= burnt < 2.0
        waited = process_cpu_seconds(child.pid)
        assert waited is not None and waited - burnt < 0.05
    finally:
        child.stdin.close()
        child.wait(10)
    assert process_cpu_seconds(None) is None


def test_the_machine_cpu_counts_another_process_work() -> None:
    before = machine_cpu()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n",
        ],
        check=True,
    )
    spent = machine_cpu() - before
    assert spent.busy >= 0.45
    assert spent.steal >= 0.0
