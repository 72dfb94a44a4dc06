"""Plain helpers for tests (no fixtures here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from consumers.target import Target
from queuestream.databases import create_engine
from queuestream.settings import Settings, load_settings

T = TypeVar("T")

#: Prometheus samples: (sample name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``condition`` until it returns a truthy value and return that value.

    Raises ``AssertionError`` naming ``message`` after ``timeout`` seconds. Exceptions
    raised by ``condition`` propagate, except those listed in ``ignore``, which count
    as "not yet" (the last one is reported on timeout).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = condition()
        except ignore as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:g}s waiting for: {message} (last result: {last!r})"
            raise AssertionError(msg)
        time.sleep(interval)


def producer_settings(url: str, bootstrap: str, prefix: str, **more: Any) -> Settings:
    """Settings for a test's own producer: its own topics and transactional id."""
    values: dict[str, Any] = {
        "source_url": url,
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "transactional_id": f"{prefix}-producer",
        "partitions": 3,
        **more,
    }
    return load_settings(None, **values)


#: The queuestream command as a user runs it, from this interpreter's environment.
CLI = [sys.executable, "-m", "queuestream.cli"]
CLI_TIMEOUT = 180  # seconds for one command


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``queuestream ARGS`` to its end (no stdin) and return what it printed."""
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def stop_gracefully(process: subprocess.Popen[Any], timeout: float) -> bool:
    """SIGTERM ``process`` and wait; kill it after ``timeout``. False: it had to be killed
    (what each of its threads was doing is printed first, for the test's report)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"not stopped {timeout} s after SIGTERM; its threads:\n{thread_stacks(process.pid)}")
        process.kill()
        process.wait(timeout=timeout)
        return False
    return True


def thread_stacks(pid: int) -> str:
    """What each thread of a Python process is doing, in Python and in native code such as
    librdkafka's (``py-spy dump --native``), or why it is unknown."""
    spy = Path(sys.executable).with_name("py-spy")
    try:
        done = subprocess.run(
            [str(spy), "dump", "--native", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy dump failed: {exc})"
    return done.stdout + done.stderr


def cli_env(bootstrap: str, prefix: str, **more: str) -> dict[str, str]:
    """The environment of a command talking to ``bootstrap`` about topics ``prefix.*``."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "QUEUESTREAM_TOPIC_PREFIX": prefix,
        **more,
    }


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``queuestream ARGS`` in the background (no stdin; stdout and stderr piped)."""
    return subprocess.Popen(
        [*CLI, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class LoggedCommand:
    """``queuestream ARGS`` in a process of its own; its log goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log: IO[str] = log.open("w")
        self.stacks = ""  # where its threads were, if it outlived a stop's bound
        self.process = subprocess.Popen(
            [*CLI, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def assert_running(self) -> None:
        assert self.process.poll() is None, f"exited early:\n{self.output()[-3000:]}"

    def wait_logged(self, *texts: str, timeout: float = 60.0) -> str:
        """Until the command has logged one of ``texts`` (it must still be running); which."""

        def logged() -> str:
            self.assert_running()
            output = self.output()
            return next((text for text in texts if text in output), "")

        message = " or ".join(map(repr, texts)) + " logged"
        return wait_for(logged, timeout=timeout, interval=0.1, message=message)

    def stop(self, bound: float) -> tuple[int | None, float]:
        """SIGTERM; the exit status (None: still running ``bound`` s later, then killed)
        and the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status: int | None = self.process.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            status = None
            self.stacks = thread_stacks(self.process.pid)
            self.process.kill()
            self.process.wait()
        finally:
            self._log.close()
        return status, time.monotonic() - started

    def assert_stops_within(self, bound: float) -> float:
        status, took = self.stop(bound)
        assert status == 0, (
            f"exit status {status} ({took:.1f}s after SIGTERM; None: still running after "
            f"{bound}s):\n{self.output()[-3000:]}\n{self.stacks}"
        )
        return took

    def close(self, bound: float = 5.0) -> None:
        """Stop the command if it still runs (killed after ``bound`` seconds)."""
        if self.process.poll() is None:
            self.stop(bound)


def scrape_metrics(port: int, timeout: float = 5.0) -> Samples:
    """Every sample a command serves at ``http://127.0.0.1:PORT/metrics``."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of ``name`` with exactly ``labels``; None when there is none."""
    return samples.get((name, tuple(sorted(labels.items()))))


class FakeClock:
    """A monotonic clock that moves only when told: by a test, or by a wait it is asked
    for (``sleep``, or ``wait`` standing in for ``Event.wait``), each of which is noted."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(round(seconds, 6))
        self.now += seconds

    def wait(self, seconds: float) -> bool:
        """``Event.wait`` of an event never set: the whole wait passes, False."""
        self.sleep(seconds)
        return False


@contextmanager
def target_engine(url: str, target: Target) -> Iterator[sa.Engine]:
    """A writer's engine on ``url`` with ``target``'s tables made; disposed after."""
    engine = create_engine(url, writer=True)
    with engine.begin() as conn:
        target.create_schema(conn)
    try:
        yield engine
    finally:
        engine.dispose()
