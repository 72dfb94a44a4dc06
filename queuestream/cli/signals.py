"""How a long-running command stops: SIGTERM and Ctrl-C finish the work in hand first."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["on_stop_signals"]

# The command's logger, so its lines read "queuestream.cli: signal 15: ..." as they always did.
log = logging.getLogger("queuestream.cli")


def on_stop_signals(stop: Callable[[], None], doing: str) -> None:
    """SIGTERM and Ctrl-C call ``stop``: the command finishes what it holds, then exits."""

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: %s", signum, doing)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
