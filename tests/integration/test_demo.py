"""``queuestream demo`` as a user runs it: its activity deletes rows, a refresh and a sweep
publish the deletes, and both targets still verify equal to the source."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import CLI, CLI_TIMEOUT, cli_env


def test_the_demo_publishes_deletes_and_verifies_both_targets(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    env = cli_env(
        kafka_bootstrap,
        unique,
        QUEUESTREAM_TRANSACTIONAL_ID=f"{unique}-producer",
        QUEUESTREAM_PARTITIONS="3",
    )
    # In a fresh directory, as from a fresh clone: the embedded defaults live under var/.
    done = subprocess.run(
        [*CLI, "demo"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "both targets verified equal to the source" in out, out
    found = re.search(r"(\d+) deletes published in all", out)
    assert found is not None, out
    assert int(found.group(1)) > 0, out
    swept = re.search(r"(\d+) deletes published by the sweep", out)
    assert swept is not None and int(swept.group(1)) > 0, out
    assert "Traceback" not in done.stderr
