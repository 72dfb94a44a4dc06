"""The producer benchmark's extra passes: without Kafka (``--breakdown``), under a profiler.

:func:`read_only_pass` runs the refresh's snapshot queries only;
:func:`encode_only_pass` the whole refresh with a send that drops the messages;
:func:`profiled_refresh` one more refresh under a profiler (``--profile DIR``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from bench.profiling import profiled
from bench.source import new_refresher
from producer.publisher import TransactionalPublisher
from queuestream.settings import Settings
from queuestream.tables import TABLES

__all__ = ["encode_only_pass", "profiled_refresh", "read_only_pass"]


class _NoKafka:
    """Stands in for TransactionalPublisher: runs the body with a send that drops messages."""

    def __init__(self) -> None:
        self.messages = 0

    def transaction(self, body: Callable[[Callable[[str, bytes, bytes, int], None]], None]) -> None:
        def send(_topic: str, _key: bytes, _value: bytes, _partition: int) -> None:
            self.messages += 1

        body(send)

    def close(self) -> None:
        pass


def encode_only_pass(settings: Settings) -> float:
    """The refresh without Kafka: snapshot, read, overlap, build and encode; send is a no-op."""
    refresher = new_refresher(settings)
    real = refresher.publisher
    refresher.publisher = cast("TransactionalPublisher", _NoKafka())  # duck-typed stand-in
    try:
        started = time.perf_counter()
        refresher.refresh()
        return time.perf_counter() - started
    finally:
        refresher.publisher = real
        refresher.close()


def read_only_pass(settings: Settings) -> tuple[float, int]:
    """Only the rows: the same snapshot queries, rows turned into dicts, nothing built."""
    refresher = new_refresher(settings)
    try:
        started = time.perf_counter()
        window = refresher.planner.plan(refresher.progress, refresher.reader.safe_end())
        count = 0
        with refresher.reader.frozen() as snapshot:
            for spec in TABLES:
                for _row in snapshot.changed_rows(spec, window.read_from, window.end):
                    count += 1
        return time.perf_counter() - started, count
    finally:
        refresher.close()


def profiled_refresh(settings: Settings, folder: Path, backend: str) -> str:
    refresher = new_refresher(settings)
    try:
        return profiled(refresher.refresh, folder, f"refresh-{backend}")
    finally:
        refresher.close()
