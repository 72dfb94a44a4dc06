"""The producer benchmark's CPU figures: another process's CPU time read from /proc (the
row reader's) counts what it spent, and not what it only waited."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bench.cpu import (
    CpuSpan,
    child_pids,
    listening_pid,
    local_services,
    machine_cpu,
    process_cpu_seconds,
    services_cpu_seconds,
    tree_cpu_seconds,
)

#: Burns 0.5 s of CPU; then says so and waits for its stdin to close.
_BURN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
_BURN_THEN_WAIT = _BURN + "print('burnt', flush=True)\nimport sys\nsys.stdin.read()\n"
#: Runs one child that burns 0.5 s and ends (waited for), then one that burns 0.5 s and
#: stays; says so, and waits for its stdin to close. The children's code is argv[1:].
_PARENT_OF_BURNERS = """
import subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1]], check=True)
live = subprocess.Popen(
    [sys.executable, "-c", sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
)
assert live.stdout.readline() == "burnt\\n"
print("one ended, one burnt and waits", flush=True)
sys.stdin.read()
live.stdin.close()
live.wait()
"""


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
    subprocess.run([sys.executable, "-c", _BURN], check=True)
    spent = machine_cpu() - before
    assert spent.busy >= 0.45
    assert spent.steal >= 0.0


def test_a_process_tree_counts_its_children_running_and_ended() -> None:
    """PostgreSQL serves each connection from a child process: its CPU is the server's.
    The children still running are found (the producer's row reader)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_OF_BURNERS, _BURN, _BURN_THEN_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None and parent.stdin is not None
    try:
        before = tree_cpu_seconds(parent.pid)
        assert before is not None
        assert parent.stdout.readline() == "one ended, one burnt and waits\n"
        after = tree_cpu_seconds(parent.pid)
        assert after is not None
        own = process_cpu_seconds(parent.pid)
        assert own is not None and own < 0.3  # the parent itself only waited
        [child] = child_pids(parent.pid)  # the ended one is gone
        assert tree_cpu_seconds(child) is not None
        # Told its children, it reads only them; a process that is not its child (a
        # pid since reused) is not counted.
        known = tree_cpu_seconds(parent.pid, [child])
        assert known is not None and abs(known - after) < 0.05
        stranger = tree_cpu_seconds(parent.pid, [os.getpid()])
        assert stranger is not None and stranger < after - 0.4
        assert after - before >= 0.9  # 0.5 s of the ended child and 0.5 of the live one
    finally:
        parent.stdin.close()
        parent.wait(10)
    assert tree_cpu_seconds(parent.pid) is None  # gone (and reaped)
    assert child_pids(parent.pid) == []


def test_a_local_service_is_found_by_the_port_it_listens_on() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listening_pid(port) == os.getpid()
        found = local_services(
            {"broker": f"127.0.0.1:{port}", "remote": f"192.0.2.1:{port}", "bad": "nowhere"}
        )
        assert found == {"broker": os.getpid()}
        assert set(services_cpu_seconds(found)) == {"broker"}
    assert listening_pid(port) is None


def test_a_span_counts_what_each_part_took_within_it_and_keeps_a_part_that_ended() -> None:
    """The freshness benchmark's cores busy by part: a part's CPU before the span is not
    counted, and one that ends before the span does (a simulator) keeps its last reading."""
    burner = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsys.stdin.readline()\n" + _BURN_THEN_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    idle = subprocess.Popen([sys.executable, "-c", _BURN_THEN_WAIT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert burner.stdout is not None and burner.stdin is not None
    assert idle.stdout is not None and idle.stdin is not None
    try:
        assert idle.stdout.readline() == "burnt\n"  # its 0.5 s come before the span
        parts = {"burner": burner.pid, "idle": idle.pid}
        span = CpuSpan()
        span.start(parts)
        started = time.monotonic()
        burner.stdin.write("go\n")
        burner.stdin.flush()
        assert burner.stdout.readline() == "burnt\n"
        span.sample(parts)
        burner.stdin.close()
        burner.wait(10)  # gone before the span ends
        busy = span.stop(parts)
        seconds = time.monotonic() - started
    finally:
        for process in (burner, idle):
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
            process.wait(10)
    assert 0.45 <= busy["burner"] * seconds < 2.0
    assert busy["idle"] * seconds < 0.1
    assert busy["machine"] >= busy["burner"] - 0.01
    assert set(busy) == {"burner", "idle", "machine", "steal"}
