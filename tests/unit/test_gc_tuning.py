"""The commands run with the garbage collector set for streaming rows (queuestream.gc_tuning)."""

from __future__ import annotations

import subprocess
import sys

from queuestream.gc_tuning import GEN0_THRESHOLD

_PROBE = """
import gc, sys
sys.argv = ["queuestream", "--help"]
from queuestream.cli import main
try:
    main()
except SystemExit:
    pass
print(gc.get_threshold()[0], gc.get_freeze_count())
"""


def test_the_command_collects_less_often_and_skips_what_start_up_made() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    threshold, frozen = map(int, done.stdout.split()[-2:])
    assert threshold == GEN0_THRESHOLD
    assert frozen > 10_000  # modules, schemas and settings made at start-up
