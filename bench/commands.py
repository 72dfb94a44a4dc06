"""queuestream commands run as a user runs them: child processes, stopped whatever happens.

bench/soak.py and bench/freshness.py run the real ``sim``, ``produce`` and
``consume`` commands as processes. :func:`running` starts one in a session of its
own (a Ctrl-C at the terminal reaches the benchmark, which stops its children in
order, not all of them at once), with its output (stdout and stderr) in a file
(a pipe nobody reads would fill and block it), and on leaving, however that
happens, sends it SIGTERM and kills it past :data:`STOP_TIMEOUT`.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "STOP_TIMEOUT",
    "add_live_arguments",
    "cli_command",
    "free_port",
    "running",
    "stderr_tail",
    "stop",
]

#: Seconds a command has to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 60.0


def add_live_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark that runs the commands: services, topics, output."""
    p.add_argument("--partitions", type=int, default=6, help="(%(default)s)")
    p.add_argument("--postgres-url", help="a PostgreSQL server (default: postgres-local.sh url)")
    p.add_argument("--bootstrap-servers", help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS, local)")
    p.add_argument("--keep-topics", action="store_true", help="do not delete the topics made")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")


def cli_command(*args: str) -> list[str]:
    """``queuestream ARGS`` with this interpreter (the checkout's, not one on PATH)."""
    return [sys.executable, "-m", "queuestream.cli", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``--metrics-port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(popen: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then wait; killed past ``timeout``. Nothing when it has already exited."""
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` with its stdout and stderr in ``log``; stopped (:func:`stop`) on leaving."""
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            args, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield popen
    finally:
        stop(popen)


def stderr_tail(log: Path, lines: int = 3) -> str:
    """The last ``lines`` lines a command wrote to its log, on one line."""
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])
