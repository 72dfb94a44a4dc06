"""How busy the machine is at each moment of the refresh cycle (``bench/freshness.py``).

A freshness run's refreshes start once a second, and each moves through the same
steps: the producer reads and publishes, the consumers fetch, decode and apply, then
nothing of the pipeline runs until the next start. The cores busy over the whole load
(``cores_busy_during_load``) average these steps with the pause between. This traces
the machine's busy time (``/proc/stat``) every few milliseconds during the load and
folds it onto the cycle: the cores busy in each tenth of a second after a refresh
started. A step that runs the machine near its cores has no core to spare for more
parallel work, and waits for a core whenever anything else runs.

Nothing here is queuestream's code path: only what the benchmark reports.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Sequence

from bench.cpu import machine_cpu

__all__ = ["MachineTrace", "busy_by_phase"]

#: Seconds between two readings of ``/proc/stat`` (its clock ticks are 10 ms).
_PERIOD = 0.02


class MachineTrace:
    """Reads the machine's busy CPU seconds every :data:`_PERIOD`, in a thread, from
    :meth:`start` to :meth:`stop`: ``(wall time, busy seconds)`` pairs."""

    def __init__(self, period: float = _PERIOD) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-trace", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self._thread.join(5)
        return self.samples

    def _run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.time(), machine_cpu().busy))
            self._halt.wait(self.period)


def busy_by_phase(
    samples: Sequence[tuple[float, float]],
    starts: Sequence[float],
    interval: float,
    bins: int = 10,
) -> dict[str, float]:
    """The cores busy in each of ``bins`` equal parts of ``interval`` after a refresh
    start, over the ``samples`` (wall time, busy seconds) taken after the first of the
    sorted ``starts``; the time after a start that lasts longer than ``interval`` (the
    next refresh started late) counts in a last part, ``">=interval"``. Keyed by the
    part's start and end in seconds ("0.0-0.1"); a part no sample fell in is left out."""
    width = interval / bins
    busy = [0.0] * (bins + 1)
    spent = [0.0] * (bins + 1)
    for (t0, b0), (t1, b1) in itertools.pairwise(samples):
        middle = (t0 + t1) / 2
        at = bisect.bisect_right(starts, middle) - 1
        if at < 0 or t1 <= t0:
            continue
        phase = middle - starts[at]
        part = min(int(phase / width), bins)
        busy[part] += b1 - b0
        spent[part] += t1 - t0
    names = [f"{i * width:.1f}-{(i + 1) * width:.1f}" for i in range(bins)]
    names.append(f">={interval:g}")
    return {name: round(busy[i] / spent[i], 2) for i, name in enumerate(names) if spent[i] > 0}
