"""The whole pipeline in a test: a source, a producer, consumers, a target, verify.

In-process and small: each step is the library call the command runs.

Nothing writes the source while a refresh runs (``simulate`` commits before ``refresh``
starts), so the watermark may reach the clock: no settle delay to wait out. A refresh
returns once its events are readable (commit markers landed), so that a consumer run
until idle right after it finds them; its idle grace is then short.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from consumers import offsets, target_named
from consumers import sync_log as sync_log_table
from consumers.reconcile import Reconciliation
from consumers.runtime import ConsumerRuntime, RunStats
from consumers.verify import verify
from producer.refresh import Refresher, RefreshResult
from producer.simulator import Simulator
from producer.sweep import Sweeper, SweepReport
from queuestream.databases import create_engine
from queuestream.kafka_clients import batches_topic, change_topics
from queuestream.settings import Settings
from queuestream.sync_schema import create_source_schema
from tests.helpers import producer_settings
from tests.integration.kafka_readback import wait_until_readable

__all__ = ["Pipeline", "assert_each_refresh_once"]


class Pipeline:
    """A source database, its topics (``prefix``) and targets, for one test."""

    def __init__(self, source_url: str, bootstrap: str, prefix: str, **more: Any) -> None:
        self.source_url = source_url
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.more = {
            "settle_seconds": 0,
            "idle_seconds": 0.5,
            "retry_backoff_seconds": 0.5,
            **more,
        }
        self.source = create_engine(source_url, writer=True)
        create_source_schema(self.source)
        self._seed = 0

    def settings(self, **more: Any) -> Settings:
        return producer_settings(
            self.source_url, self.bootstrap, self.prefix, **{**self.more, **more}
        )

    def simulate(self, actions: int, per_transaction: int = 20) -> None:
        self._seed += 1
        settings = self.settings()
        Simulator(self.source, settings.zone, seed=self._seed).run(
            actions, per_transaction=per_transaction
        )

    def refresh(self) -> list[RefreshResult]:
        """One refresh of everything simulated so far, readable when this returns."""
        settings = self.settings()
        refresher = Refresher(settings)  # its own engine: a reader, like the command's
        try:
            results = refresher.refresh()
        finally:
            refresher.close()
        wait_until_readable(self.bootstrap, [*change_topics(settings), batches_topic(settings)])
        return results

    def sweep(self, **more: Any) -> SweepReport:
        """One sweep pass, unthrottled, readable when this returns."""
        settings = self.settings(**more)
        refresher = Refresher(settings)
        try:
            report = Sweeper(refresher, max_rows_per_second=1e9).run_pass()
        finally:
            refresher.close()
        wait_until_readable(self.bootstrap, [*change_topics(settings), batches_topic(settings)])
        return report

    def runtime(self, target: str, target_url: str, **more: Any) -> ConsumerRuntime:
        settings = self.settings(target_url=target_url, **more)
        return ConsumerRuntime(settings, target_named(target), until_idle=True)

    def consume(self, target: str, target_url: str, **more: Any) -> RunStats:
        """Apply everything committed so far (until idle), in this process."""
        return self.runtime(target, target_url, **more).run()

    def verify(self, target: str, target_url: str) -> Reconciliation:
        return verify(self.settings(target_url=target_url), target)

    def sync_log(self, target: str, target_url: str) -> list[dict[str, Any]]:
        engine = create_engine(target_url)
        try:
            with engine.connect() as conn:
                return sync_log_table.read(conn, target)
        finally:
            engine.dispose()

    def close(self) -> None:
        self.source.dispose()


def run_in_thread(runtime: ConsumerRuntime) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``runtime`` until its ``stop`` is set; errors are collected, not lost."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            runtime.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name=f"consumer-{runtime.target.name}", daemon=True)
    thread.start()
    return thread, errors


def group_offsets(
    bootstrap: str, group: str, topics: Iterable[str], partitions: int
) -> dict[tuple[str, int], int]:
    """The offsets committed to a Kafka consumer group (partitions never committed: absent)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        wanted = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in consumer.committed(wanted, timeout=10)
            if tp.offset >= 0
        }
    finally:
        consumer.close()


def stored_offsets(url: str, target: str) -> dict[tuple[str, int], int]:
    """The offsets a target database holds (``queuestream_offsets``)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return offsets.stored_offsets(conn, target)
    finally:
        engine.dispose()


#: Bookkeeping that differs by nature between two runs (members, durations, times).
_BOOKKEEPING = {"queuestream_sync_log", "queuestream_offsets"}


def target_content(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a target (bookkeeping aside), in a stable order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(set(sa.inspect(conn).get_table_names()) - _BOOKKEEPING)
            return {
                name: sorted(
                    (tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {name}"))),
                    key=repr,
                )
                for name in names
            }
    finally:
        engine.dispose()


def table_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]
    finally:
        engine.dispose()


def assert_ranges_disjoint(entries: list[dict[str, Any]]) -> None:
    """No offset of a partition lies in the ranges of two sync-log entries (applied twice)."""
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for entry in entries:
        for topic, partitions in entry["offsets"].items():
            for partition, (first, last) in partitions.items():
                spans.setdefault((topic, int(partition)), []).append((first, last))
    for where, ranges in spans.items():
        for a, b in pairwise(sorted(ranges)):
            assert a[1] < b[0], f"{where}: offset ranges {a} and {b} overlap"


def assert_each_refresh_once(
    pipeline: Pipeline, target: str, url: str, published: list[str]
) -> list[dict[str, Any]]:
    """Each refresh ``published`` for ``target`` is in its sync log once, and nothing else;
    the logged offset ranges never overlap. Returns the sync log."""
    entries = pipeline.sync_log(target, url)
    applied = Counter(e["refresh_id"] for e in entries)
    assert published, "the producer published nothing for the target"
    assert {r: applied[r] for r in published} == dict.fromkeys(published, 1), (
        f"refreshes not applied exactly once: {applied}"
    )
    assert set(applied) == set(published), "the sync log names refreshes never published"
    assert_ranges_disjoint(entries)
    return entries
