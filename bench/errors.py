"""How a benchmark gives up: :class:`BenchError`, and the ``--timeout`` :class:`Deadline`.

Every module of bench/ raises :class:`BenchError` when the run cannot go on;
``main_with`` (bench/session.py) prints it as one line and exits 1.
"""

from __future__ import annotations

import time

__all__ = ["BenchError", "Deadline"]


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


class Deadline:
    """The run's ``--timeout``: :meth:`check` raises :class:`BenchError` once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, doing: str) -> None:
        if self.left() <= 0:
            msg = f"--timeout {self.seconds:g}s reached while {doing}"
            raise BenchError(msg)
