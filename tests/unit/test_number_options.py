"""Number options out of their range stop the command before anything connects.

A negative ``produce --interval`` refreshed without a pause, ``sim --per-transaction 0``
spun at full CPU without end, ``sweep --max-rows-per-second 0`` fell back to the
default, ``--max-refreshes 0`` ran one refresh and ``monitor --max-lag -1`` reported
every partition over it. Each now exits 1 with one line naming the option; nothing
listens at the broker's address and the source does not exist, so a command that
connected first would wait or create the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli

_ERROR_LINE = re.compile(r"^[A-Za-z]+Error: ")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["produce", "--interval", "-5"], "--interval -5: give 0 or more"),
        (["produce", "--max-refreshes", "0"], "--max-refreshes 0: give 1 or more"),
        (["produce", "--max-refreshes", "-1"], "--max-refreshes -1: give 1 or more"),
        (["sim", "--per-transaction", "0"], "--per-transaction 0: give 1 or more"),
        (["sim", "--actions", "-3"], "--actions -3: give 0 or more"),
        (["sim", "--rate", "0"], "--rate 0: give more than 0"),
        (["sim", "--id-stride", "2", "--id-offset", "2"], "--id-offset 2: give 0 to"),
        (["sweep", "--max-rows-per-second", "0"], "--max-rows-per-second 0: give more than 0"),
        (["sweep", "--max-rows-per-second", "-1"], "--max-rows-per-second -1: give more than"),
        (["sweep", "--chunk", "0"], "--chunk 0: give 1 or more"),
        (["monitor", "--once", "--interval", "0"], "--interval 0: give more than 0"),
        (["monitor", "--check", "--max-lag", "-1"], "--max-lag -1: give 0 or more"),
        (["monitor", "--check", "--max-lag-seconds", "-5"], "--max-lag-seconds -5: give 0"),
        (["demo", "--actions", "0"], "--actions 0: give 1 or more"),
    ],
)
def test_a_number_out_of_range_stops_at_once_with_one_line(
    tmp_path: Path, args: list[str], line: str
) -> None:
    source = tmp_path / "sync.db"
    env = cli_env(
        "127.0.0.1:1",
        "numbers",
        QUEUESTREAM_SOURCE_URL=f"sqlite:///{source}",
        QUEUESTREAM_BROKER_TIMEOUT_SECONDS="30",
    )
    done = run_cli(args, env, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    errors = [e for e in done.stderr.splitlines() if _ERROR_LINE.match(e)]
    assert errors and errors[0].startswith(f"ConfigurationError: {line}"), done.stderr
    assert len(errors) == 1, done.stderr
    assert not source.exists()
