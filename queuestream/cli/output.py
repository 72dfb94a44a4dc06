"""Where the command writes: its two consoles, JSON on stdout and the progress bar.

Results go to stdout (``console``); notes, warnings, errors and the progress bar
to stderr (``err_console``), so that ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

__all__ = ["PIPE_WIDTH", "console", "err_console", "print_json", "progress_bar"]

#: Columns of output that is not a terminal's (a pipe, a file, a service's log), unless
#: COLUMNS says otherwise: rich's 80 cut verify's sums short ("34886.06/344…"), and a
#: table is no wider than its contents need.
PIPE_WIDTH = 240


def _console(*, stderr: bool = False) -> Console:
    made = Console(stderr=stderr, soft_wrap=True)
    if made.is_terminal or "COLUMNS" in os.environ:
        return made
    return Console(stderr=stderr, soft_wrap=True, width=PIPE_WIDTH)


console = _console()
err_console = _console(stderr=True)


def print_json(data: Any) -> None:
    """``data`` (what an ``as_dict()`` returns) as indented, highlighted JSON on stdout."""
    console.print_json(json.dumps(data))


def progress_bar() -> Progress:
    """A progress bar on stderr, shown on a terminal only."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
