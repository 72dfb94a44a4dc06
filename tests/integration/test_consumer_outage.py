"""Promise 5 in the consumers, against a real broker: the target database goes down.

The target is a PostgreSQL server of its own, stopped and started again while the
producer keeps publishing (rounds of simulate + refresh in the test thread) and a
consumer runtime runs in a thread. While the target is down the runtime commits
nothing (not to the target, not to the Kafka group), reports the outage and keeps
running; once the target is back it catches up. Nothing is lost, nothing is applied
twice: each refresh shows in the target's sync log exactly once, and the sync log's
offset ranges never overlap. Also when the target is already down as the consumer
starts, and when it goes down in the middle of a refresh being applied in parts
(:mod:`consumers.streaming`): the open transaction is rolled back and the refresh
read again from the target's offsets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from consumers import runtime as runtime_module
from consumers import streaming, target_named
from consumers.assembly import Assembler, Batch
from consumers.runtime import ConsumerRuntime
from queuestream.errors import ConfigurationError
from tests import services
from tests.helpers import wait_for
from tests.integration.pipeline import (
    Pipeline,
    assert_each_refresh_once,
    group_offsets,
    run_in_thread,
    stored_offsets,
)

TARGETS = ["accounting", "shipping"]
PARTITIONS = 3
#: Bounds of the waits below (seconds).
SETTLED_TIMEOUT = 30
OUTAGE_SEEN_TIMEOUT = 30
CATCH_UP_TIMEOUT = 60
STOP_TIMEOUT = 30
#: The target stays down at least this long (the producer publishes meanwhile).
DOWN_SECONDS = 4.0


@pytest.fixture(scope="module")
def target_server(own_postgres: services.Service) -> services.Service:
    """The module's own PostgreSQL server (tests/integration/conftest.py), so that it can
    be stopped and started."""
    return own_postgres


class Target:
    """A fresh database on ``target_server``, and the server's down/up switch."""

    def __init__(self, server: services.Service, name: str) -> None:
        assert server.control is not None
        self._control = server.control
        admin = sa.create_engine(
            server.address, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        self.url = make_url(server.address).set(database=name).render_as_string(False)

    def stop_server(self) -> None:
        self._control("down")

    def start_server(self) -> None:
        self._control("up")  # idempotent


@pytest.fixture
def pipeline(sqlite_url: str, kafka_bootstrap: str, unique: str) -> Iterator[Pipeline]:
    pipe = Pipeline(sqlite_url, kafka_bootstrap, unique, partitions=PARTITIONS)
    try:
        yield pipe
    finally:
        pipe.close()


@pytest.fixture
def target_db(target_server: services.Service, unique: str) -> Iterator[Target]:
    target = Target(target_server, f"qs_{unique}_target")
    try:
        yield target
    finally:
        target.start_server()  # for the next test, whatever happened in this one


class ConsumerThread:
    """A ConsumerRuntime in a thread, stopped by its ``stop`` event (as by SIGTERM)."""

    def __init__(self, pipeline: Pipeline, target: str, url: str) -> None:
        settings = pipeline.settings(
            target_url=url, retry_backoff_seconds=0.3, target_retry_max_seconds=2.0
        )
        self.stop = threading.Event()
        self.runtime = ConsumerRuntime(
            settings, target_named(target), until_idle=False, stop=self.stop
        )
        self.thread, self.errors = run_in_thread(self.runtime)

    def assert_healthy(self) -> None:
        assert not self.errors, f"the consumer failed: {self.errors!r}"
        assert self.thread.is_alive(), "the consumer thread ended by itself"

    def finish(self) -> None:
        """Set ``stop`` (SIGTERM) and wait for the thread; checked by ``assert_finished``."""
        self.stop.set()
        self.thread.join(timeout=STOP_TIMEOUT)
        self.runtime.engine.dispose()

    def assert_finished(self) -> None:
        assert not self.thread.is_alive(), f"the consumer did not stop in {STOP_TIMEOUT}s"
        assert not self.errors, f"the consumer failed: {self.errors!r}"


class Rounds:
    """Source activity and refreshes, collecting the refreshes with events for a target."""

    def __init__(self, pipeline: Pipeline, target: str) -> None:
        self.pipeline = pipeline
        self.tables = set(target_named(target).tables)
        self.published: list[str] = []

    def run(self, actions: int = 40) -> None:
        self.pipeline.simulate(actions, per_transaction=5)
        for result in self.pipeline.refresh():
            if any(result.counts.get(t, 0) for t in self.tables):
                self.published.append(result.refresh_id)


def _group_offsets(runtime: ConsumerRuntime) -> dict[tuple[str, int], int]:
    """The offsets committed to the runtime's Kafka group."""
    bootstrap = runtime.settings.kafka_bootstrap_servers
    return group_offsets(bootstrap, runtime.group, runtime.tables, PARTITIONS)


def _wait_verified(pipeline: Pipeline, target: str, url: str, consumer: ConsumerThread) -> None:
    last: list[Any] = []

    def verified() -> bool:
        consumer.assert_healthy()
        report = pipeline.verify(target, url)
        last[:] = [report]
        return report.ok

    try:
        wait_for(
            verified,
            timeout=CATCH_UP_TIMEOUT,
            interval=0.5,
            message=f"{target} equals the source (verify)",
            # The server may still be starting; the consumer may not have created the schema.
            ignore=(sa.exc.DBAPIError, ConfigurationError),
        )
    except AssertionError:
        print(f"last verify report: {last[0].as_dict() if last else None}")
        raise


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.slow
def test_the_target_going_down_mid_stream_loses_and_repeats_nothing(
    pipeline: Pipeline, target_db: Target, target: str
) -> None:
    started = time.monotonic()
    rounds = Rounds(pipeline, target)
    rounds.run()
    consumer = ConsumerThread(pipeline, target, target_db.url)
    timings: dict[str, float] = {}
    try:
        # Everything published so far applied, and its offsets in Kafka too: nothing is
        # in flight when the target goes down.
        _wait_verified(pipeline, target, target_db.url, consumer)

        def settled() -> dict[tuple[str, int], int]:
            found = _group_offsets(consumer.runtime)
            return found if found == stored_offsets(target_db.url, target) else {}

        committed = wait_for(
            settled, timeout=SETTLED_TIMEOUT, message="the group offsets reach the target's"
        )
        batches = consumer.runtime.stats.batches
        assert batches >= 1
        assert consumer.runtime.stats.outages == 0

        target_db.stop_server()
        down_at = time.monotonic()
        timings["down"] = down_at - started

        def publishing_while_down() -> bool:
            rounds.run()
            consumer.assert_healthy()
            return consumer.runtime.stats.outages >= 1

        wait_for(
            publishing_while_down,
            timeout=OUTAGE_SEEN_TIMEOUT,
            message="the consumer reports the outage",
        )
        timings["outage seen"] = time.monotonic() - started
        while time.monotonic() - down_at < DOWN_SECONDS:
            rounds.run()
        consumer.assert_healthy()
        assert consumer.runtime.stats.batches == batches, "a batch was applied while down"
        assert _group_offsets(consumer.runtime) == committed, "offsets moved while down"
        assert consumer.runtime.stats.outages >= 1

        target_db.start_server()
        timings["up"] = time.monotonic() - started
        rounds.run()
        _wait_verified(pipeline, target, target_db.url, consumer)
        timings["verified"] = time.monotonic() - started
    finally:
        consumer.finish()
    consumer.assert_finished()

    stats = consumer.runtime.stats
    assert stats.batches > batches
    assert_each_refresh_once(pipeline, target, target_db.url, rounds.published)
    assert _group_offsets(consumer.runtime) == stored_offsets(target_db.url, target)
    print(f"{target}: {len(rounds.published)} refreshes, {stats}; timings {timings}")


@pytest.mark.parametrize("target", TARGETS)
def test_a_consumer_started_while_the_target_is_down_catches_up(
    pipeline: Pipeline, target_db: Target, target: str
) -> None:
    started = time.monotonic()
    rounds = Rounds(pipeline, target)
    rounds.run()
    target_db.stop_server()
    down_at = time.monotonic()
    consumer = ConsumerThread(pipeline, target, target_db.url)
    timings: dict[str, float] = {}
    try:
        while time.monotonic() - down_at < DOWN_SECONDS:
            rounds.run()
            consumer.assert_healthy()
        consumer.assert_healthy()
        assert consumer.runtime.stats.batches == 0
        assert _group_offsets(consumer.runtime) == {}

        target_db.start_server()
        timings["up"] = time.monotonic() - started
        rounds.run()
        _wait_verified(pipeline, target, target_db.url, consumer)
        timings["verified"] = time.monotonic() - started
    finally:
        consumer.finish()
    consumer.assert_finished()

    stats = consumer.runtime.stats
    assert stats.batches >= 1
    assert_each_refresh_once(pipeline, target, target_db.url, rounds.published)
    assert _group_offsets(consumer.runtime) == stored_offsets(target_db.url, target)
    print(f"{target}: {len(rounds.published)} refreshes, {stats}; timings {timings}")


@pytest.mark.parametrize("target", TARGETS)
def test_the_target_going_down_mid_refresh_rolls_the_parts_back_and_repeats_nothing(
    pipeline: Pipeline, target_db: Target, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parts of 40 events once 60 are held, read 25 at a time: a refresh is applied in parts.
    monkeypatch.setattr(streaming, "OPEN_AT", 60)
    monkeypatch.setattr(streaming, "PART", 40)
    monkeypatch.setattr(runtime_module, "_CONSUME_BATCH", 25)
    rounds = Rounds(pipeline, target)
    rounds.run(400)
    parts: list[Batch] = []
    take = Assembler.take

    def take_then_go_down(self: Assembler, refresh_ids: Any) -> Batch:
        part = take(self, refresh_ids)
        parts.append(part)
        if len(parts) == 2:  # the first part is written, not committed: the target goes
            target_db.stop_server()
        return part

    monkeypatch.setattr(Assembler, "take", take_then_go_down)
    consumer = ConsumerThread(pipeline, target, target_db.url)
    try:

        def outage_seen() -> bool:
            consumer.assert_healthy()
            return consumer.runtime.stats.outages >= 1

        wait_for(outage_seen, timeout=OUTAGE_SEEN_TIMEOUT, message="the consumer sees the outage")
        assert consumer.runtime.stats.batches == 0, "a refresh committed in part"
        target_db.start_server()
        _wait_verified(pipeline, target, target_db.url, consumer)
    finally:
        consumer.finish()
    consumer.assert_finished()
    assert len(parts) > 2, "the refresh was read and applied again after the outage"
    assert_each_refresh_once(pipeline, target, target_db.url, rounds.published)
    assert _group_offsets(consumer.runtime) == stored_offsets(target_db.url, target)
