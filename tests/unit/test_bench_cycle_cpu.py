"""bench/cycle_cpu.py: the machine's busy cores folded onto the refresh cycle."""

from __future__ import annotations

import itertools
import time

import pytest

from bench.cycle_cpu import MachineTrace, busy_by_phase


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
