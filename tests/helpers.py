"""Plain helpers for tests (no fixtures here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from queuestream.settings import Settings, load_settings

T = TypeVar("T")


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
