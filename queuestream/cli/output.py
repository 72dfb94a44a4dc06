"""Where the command writes: its two consoles, JSON on stdout and the progress bar.

Results go to stdout (``console``); notes, warnings, errors and the progress bar
to stderr (``err_console``), so that ``--json`` output stays machine-readable.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

__all__ = ["console", "err_console", "print_json", "progress_bar"]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


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
