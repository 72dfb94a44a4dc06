"""How busy the machine is at each moment of the refresh cycle (``bench/freshness.py``).

A freshness run's refreshes start once a second, and each moves through the same
steps: the producer reads and publishes, the consumers fetch, decode and apply, then
nothing of the pipeline runs until the next start. The cores busy over the whole load
(``cores_busy_during_load``) average these steps with the pause between. This traces
the machine's busy time (``/proc/stat``) every few milliseconds during the load and
folds it onto the cycle: the cores busy in each tenth of a second after a refresh
started. A step that runs the machine near its cores has no core to spare for more
parallel work, and waits for a core whenever anything else runs.

The same trace reads the parts given to it (a process and its children: the
producer, PostgreSQL and its backends, the broker, each consumer, each simulator),
less often (:data:`_PARTS_PERIOD`), so that each step's cores are told apart by who
took them: which part to make cheaper for the step to end sooner. Children are looked
for twice a second: one found at a look brings what it took before into that reading,
and one that starts and ends between two looks is counted once its parent has waited
for it (PostgreSQL's postmaster does at once). Over a minute of refreshes from the same
pooled connections, both are small.

Nothing here is queuestream's code path: only what the benchmark reports.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Sequence

from bench.cpu import children_by_parent, machine_cpu, tree_cpu_seconds

__all__ = ["MachineTrace", "busy_between", "busy_by_phase", "parts_by_phase"]

#: Seconds between two readings of ``/proc/stat`` (its clock ticks are 10 ms).
_PERIOD = 0.02
#: Seconds between two readings of the parts (a file of ``/proc`` a process each: the
#: trace's own CPU stays near 1% of a core), and between two looks for their children.
_PARTS_PERIOD = 0.05
_CHILDREN_PERIOD = 0.5


class MachineTrace:
    """Reads the machine's busy CPU seconds every :data:`_PERIOD`, in a thread, from
    :meth:`start` to :meth:`stop`: ``(wall time, busy seconds)`` pairs; and each part
    :meth:`add`-ed (a name and the pid of a process read with its children) every
    ``parts_period``, into :attr:`parts`."""

    def __init__(self, period: float = _PERIOD, parts_period: float = _PARTS_PERIOD) -> None:
        self.period = period
        self.parts_period = parts_period
        self.samples: list[tuple[float, float]] = []
        #: Per part, ``(wall time, CPU seconds)`` pairs while the part ran.
        self.parts: dict[str, list[tuple[float, float]]] = {}
        self._pids: dict[str, int] = {}
        self._children: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-trace", daemon=True)

    def add(self, name: str, pid: int) -> None:
        """Trace ``pid`` and its children as ``name`` from now on."""
        with self._lock:
            self._pids[name] = pid
            self.parts.setdefault(name, [])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self._thread.join(5)
        return self.samples

    def _run(self) -> None:
        next_parts = next_children = 0.0
        while not self._halt.is_set():
            now = time.time()
            self.samples.append((now, machine_cpu().busy))
            if now >= next_parts:
                if now >= next_children:
                    self._find_children()
                    next_children = now + _CHILDREN_PERIOD
                self._read_parts(now)
                next_parts = now + self.parts_period
            self._halt.wait(self.period)

    def _find_children(self) -> None:
        with self._lock:
            pids = dict(self._pids)
        children = children_by_parent()
        for name, pid in pids.items():
            self._children[name] = children.get(pid, [])

    def _read_parts(self, now: float) -> None:
        with self._lock:
            pids = dict(self._pids)
        for name, pid in pids.items():
            seconds = tree_cpu_seconds(pid, self._children.get(name, []))
            if seconds is not None:  # None: it ended
                self.parts[name].append((now, seconds))


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


def parts_by_phase(
    parts: dict[str, list[tuple[float, float]]],
    starts: Sequence[float],
    interval: float,
    bins: int = 10,
) -> dict[str, dict[str, float]]:
    """:func:`busy_by_phase` of each part's samples, by phase: ``{phase: {part: cores}}``
    (a part with no sample in a phase is left out of it)."""
    found: dict[str, dict[str, float]] = {}
    for name, samples in parts.items():
        for phase, cores in busy_by_phase(samples, starts, interval, bins).items():
            found.setdefault(phase, {})[name] = cores
    return found


def busy_between(samples: Sequence[tuple[float, float]], begin: float, end: float) -> float | None:
    """The cores busy from ``begin`` to ``end`` by the ``samples`` (wall time, CPU
    seconds) taken within it: from the first to the last of them; None when fewer than
    two fall within it."""
    inside = [(t, cpu) for t, cpu in samples if begin <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, cpu0), (t1, cpu1) = inside[0], inside[-1]
    return round((cpu1 - cpu0) / (t1 - t0), 2)
