"""bench/cycle_cpu.py: the machine's busy cores folded onto the refresh cycle."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest

from bench.cycle_cpu import MachineTrace, busy_between, busy_by_phase, parts_by_phase


def test_busy_time_is_folded_onto_the_tenth_of_a_second_after_the_last_start() -> None:
    # Refreshes start at 100.0 and 101.0; the machine is busy on both cores for the
    # first 0.3 s after each start, on half a core for the rest (a sample each 20 ms).
    samples = [(100.0, 0.0)]
    for step in range(100):
        cores = 2.0 if step % 50 < 15 else 0.5
        samples.append((100.0 + (step + 1) * 0.02, samples[-1][1] + 0.02 * cores))
    phases = busy_by_phase(samples, [100.0, 101.0], 1.0)
    assert phases["0.0-0.1"] == pytest.approx(2.0)
    assert phases["0.2-0.3"] == pytest.approx(2.0)
    assert phases["0.3-0.4"] == pytest.approx(0.5)
    assert phases["0.9-1.0"] == pytest.approx(0.5)
    assert len(phases) == 10


def test_time_before_the_first_start_is_left_out_and_a_late_start_counts_apart() -> None:
    # One start at 100.0: 99.0-100.0 lies before it; 101.0-102.0 is a second or more
    # after it (the next refresh started late). Each span counts where its middle lies.
    samples = [(99.0, 0.0), (99.5, 1.0), (100.0, 2.0), (100.5, 3.0), (101.0, 3.25)]
    samples += [(101.5, 3.75), (102.0, 4.25)]
    phases = busy_by_phase(samples, [100.0], 1.0, bins=2)
    assert phases == {"0.0-0.5": 2.0, "0.5-1.0": 0.5, ">=1": 1.0}


def test_the_trace_reads_the_machine_until_stopped() -> None:
    trace = MachineTrace(period=0.01)
    trace.start()
    time.sleep(0.1)
    samples = trace.stop()
    assert len(samples) >= 3
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    assert all(b1 >= b0 for (_, b0), (_, b1) in itertools.pairwise(samples))


def test_each_part_is_folded_onto_the_cycle_apart() -> None:
    # One start at 100.0: the producer busy for the first half second, the consumer
    # for the second; PostgreSQL sampled only in the second half (it started then).
    producer = [(100.0, 0.0), (100.5, 0.5), (101.0, 0.5)]
    consumer = [(100.0, 1.0), (100.5, 1.0), (101.0, 1.4)]
    postgres = [(100.5, 3.0), (101.0, 3.5)]
    phases = parts_by_phase(
        {"producer": producer, "consumer": consumer, "postgres": postgres}, [100.0], 1.0, bins=2
    )
    assert phases == {
        "0.0-0.5": {"producer": 1.0, "consumer": 0.0},
        "0.5-1.0": {"producer": 0.0, "consumer": 0.8, "postgres": 1.0},
    }


_BURN_THEN_WAIT = (
    "import sys, time\nend = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\nprint('burnt', flush=True)\nsys.stdin.read()\n"
)


def test_the_trace_reads_a_part_with_its_children() -> None:
    """A part is a process and its children (PostgreSQL's backends): a child's CPU counts."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
         "sys.argv[1]], stdin=sys.stdin)", _BURN_THEN_WAIT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdin is not None and parent.stdout is not None
    trace = MachineTrace(period=0.01, parts_period=0.01)
    try:
        trace.add("parent", parent.pid)
        trace.start()
        assert parent.stdout.readline() == "burnt\n"
        time.sleep(0.6)  # a look for children (twice a second) and readings after it
        trace.stop()
    finally:
        parent.stdin.close()
        parent.wait(10)
    samples = trace.parts["parent"]
    assert len(samples) >= 10
    assert samples[-1][1] - samples[0][1] >= 0.25  # the child's burn, not the parent's wait
    assert all(c1 >= c0 for (_, c0), (_, c1) in itertools.pairwise(samples))


def test_the_cores_of_a_span_come_from_the_samples_within_it() -> None:
    samples = [(100.0, 0.0), (100.5, 0.25), (101.0, 1.25), (101.5, 1.5)]
    assert busy_between(samples, 100.4, 101.1) == 2.0  # 100.5 -> 101.0
    assert busy_between(samples, 100.0, 101.5) == 1.0
    assert busy_between(samples, 100.6, 100.9) is None  # no two samples within it
