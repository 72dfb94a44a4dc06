"""CPU time read from /proc: the machine's, a process's, and a local service's.

On this 2-core machine the broker and PostgreSQL run beside what a benchmark
measures and take their share of the same cores. :func:`local_services` finds them
by the TCP port they listen on (whoever started them), and :func:`tree_cpu_seconds`
counts what one took, its children's too (PostgreSQL serves each connection from a
process of its own). Nothing here is queuestream's code path: only what the
benchmarks report beside their figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuSpan",
    "MachineCpu",
    "child_pids",
    "children_by_parent",
    "listening_pid",
    "local_services",
    "machine_cpu",
    "proc_stat",
    "process_cpu_seconds",
    "services_cpu_seconds",
    "tree_cpu_seconds",
]

_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"  # the state column of a listening socket in /proc/net/tcp
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine, all cores together (``/proc/stat``)."""

    busy: float  # user, nice, system, irq and softirq: every process's work
    steal: float  # time the host gave to others while this machine wanted to run

    def __sub__(self, earlier: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - earlier.busy, self.steal - earlier.steal)


def machine_cpu() -> MachineCpu:
    """The machine's CPU seconds so far (the ``cpu`` line of ``/proc/stat``)."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return MachineCpu((user + nice + system + irq + softirq) / tick, steal / tick)


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    if pid is None:
        return None
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int, children: Iterable[int] | None = None) -> float | None:
    """CPU seconds of ``pid`` and its children so far: its own, those of the children it
    has waited for (``cutime``, ``cstime``), and those of each child still running.
    None when ``pid`` is gone. A child that ends between two readings moves its time
    from the live sum to its parent's waited-for sum once the parent has waited for it
    (PostgreSQL's postmaster does at once): nothing is lost. ``children``: the children
    to read, when the caller knows them (:func:`child_pids`, read a moment before);
    by default every process is looked at."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        own = proc_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = sum(int(v) for v in own[11:15])
    for child in child_pids(pid) if children is None else children:
        try:
            fields = proc_stat(child)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # ended meanwhile
        if fields[1] == str(pid):  # still the child it was (a pid is reused)
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / tick


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started that are still running."""
    return children_by_parent().get(pid, [])


def children_by_parent() -> dict[int, list[int]]:
    """Every running process's pid, under its parent's: one look at ``/proc``."""
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(proc_stat(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue  # ended meanwhile
            found.setdefault(parent, []).append(int(entry.name))
    return found


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` of this machine, None when none is (or /proc
    does not say: another user's process, a container without /proc/net)."""
    sockets: set[str] = set()
    for table in _TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in sockets:
                    return int(entry.name)
        except OSError:
            continue  # ended meanwhile, or not ours to look into
    return None


def _local_port(address: str) -> int | None:
    """The port of ``host:port`` when the host is this machine's loopback, else None."""
    host, _, port = address.strip().rpartition(":")
    if host not in _LOCAL_HOSTS or not port.isdigit():
        return None
    return int(port)


def local_services(services: dict[str, str]) -> dict[str, int]:
    """The pid of each service (name: ``host:port``) that listens on this machine's
    loopback; one elsewhere, or not found, is left out."""
    found: dict[str, int] = {}
    for name, address in services.items():
        port = _local_port(address)
        pid = None if port is None else listening_pid(port)
        if pid is not None:
            found[name] = pid
    return found


def services_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """:func:`tree_cpu_seconds` of each service still running (one look at ``/proc`` for
    the children of all of them)."""
    children = children_by_parent()
    found: dict[str, float] = {}
    for name, pid in pids.items():
        seconds = tree_cpu_seconds(pid, children.get(pid, []))
        if seconds is not None:
            found[name] = seconds
    return found


class CpuSpan:
    """Cores busy over a span of a run, by part: CPU seconds taken between
    :meth:`start` and :meth:`stop`, divided by the span's seconds.

    ``trees`` are read with their children (the producer's row reader, PostgreSQL's
    backends); a part that ended before :meth:`stop` keeps its last reading
    (:meth:`sample` it meanwhile), and one started after :meth:`start` counts from 0.
    """

    def __init__(self) -> None:
        self._before: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._machine: MachineCpu | None = None
        self._started = 0.0

    def start(self, trees: dict[str, int]) -> None:
        self._started = time.monotonic()
        self._machine = machine_cpu()
        self._before = services_cpu_seconds(trees)
        self._last = dict(self._before)

    def sample(self, trees: dict[str, int]) -> None:
        self._last.update(services_cpu_seconds(trees))

    def stop(self, trees: dict[str, int]) -> dict[str, float]:
        """Cores busy per part, and ``machine`` (every process) and ``steal``."""
        assert self._machine is not None, "start() first"
        self.sample(trees)
        seconds = time.monotonic() - self._started
        machine = machine_cpu() - self._machine
        busy = {
            name: round((last - self._before.get(name, 0.0)) / seconds, 3)
            for name, last in self._last.items()
        }
        busy["machine"] = round(machine.busy / seconds, 3)
        busy["steal"] = round(machine.steal / seconds, 3)
        return busy
