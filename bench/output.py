"""What a benchmark prints: results on stdout, progress lines on stderr, tables of runs.

``--json`` keeps stdout for the JSON report and stderr for errors: progress lines
are then left out.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["Progress", "err", "out", "print_runs", "progress_printer"]

out = Console()
err = Console(stderr=True)


Progress = Callable[[str], None]  # a progress line's sink


def progress_printer(quiet: bool) -> Progress:
    """Progress lines on stderr (none with ``quiet``: JSON mode keeps stderr for errors)."""

    def progress(text: str) -> None:
        if not quiet:
            err.print(f"[dim]{text}[/]", highlight=False)

    return progress


def print_runs(
    title: str,
    columns: Sequence[tuple[str, str]],
    runs: Iterable[dict[str, Any]],
    caption: str = "",
) -> None:
    """A table of ``runs``: ``columns`` are (header, ``str.format`` template of a run's fields).

    A cell whose fields are None shows "-"; the first column is left-aligned.
    """
    table = Table(title=title, caption=caption or None)
    for i, (header, _) in enumerate(columns):
        table.add_column(header, justify="right" if i else "left", no_wrap=True)
    for run in runs:
        table.add_row(
            *(
                "-" if any(run[f] is None for f in _fields(template)) else template.format(**run)
                for _, template in columns
            )
        )
    out.print(table)


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]
