"""Output that is not a terminal's is not cut at rich's 80 columns (verify's sums were:
"34886.06/344…" in a log); COLUMNS still decides where it is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from queuestream.cli.output import PIPE_WIDTH

_WIDTHS = (
    "from queuestream.cli.output import console, err_console; "
    "print(console.width, err_console.width)"
)


@pytest.mark.parametrize(("columns", "width"), [(None, PIPE_WIDTH), ("100", 100)])
def test_a_pipe_gets_the_wide_width_unless_columns_is_set(columns: str | None, width: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    done = subprocess.run(
        [sys.executable, "-c", _WIDTHS], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [str(width), str(width)]
