"""SIGTERM while the broker is down: each long-running command exits at once (promise 5).

A user stopping a command (systemd, Kubernetes, Ctrl-C) expects it to be gone within
a couple of seconds, and Kubernetes kills it 30 s after SIGTERM. While the broker was
down, every metadata request waited out ``broker_timeout_seconds`` (15 s) before a
signal handler could run, and the producer then tried the refresh in hand again: a
consumer started during the outage took 10-15 s to stop, ``produce`` about 45 s.

Each command runs as a user runs it (a process of its own) against a broker of this
module's own, which the test stops and starts. Stopping early loses nothing and
repeats nothing: the consumer commits nothing more (applied rows and offsets commit
in one target transaction), the producer commits nothing half-way (one Kafka
transaction a refresh), and after the broker is back the next run catches up: the
target equals the source, each refresh applied once; every source row version is in
Kafka exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers import target_named
from producer.publisher import Send, TransactionalPublisher
from queuestream.errors import CommitOutcomeUnknownError, ConfigurationError
from queuestream.kafka_clients import CLOSE_SECONDS, close_consumer, consumer_config, ensure_topics
from tests import services
from tests.helpers import LoggedCommand, cli_env, producer_settings, wait_for
from tests.integration.kafka_readback import committed_changes, committed_messages
from tests.integration.pipeline import Pipeline, assert_each_refresh_once
from tests.integration.source_versions import (
    assert_exactly_once,
    source_versions,
    wait_all_published,
)

#: How soon after SIGTERM a command must have exited (seconds).
STOP_BOUND = 5.0
#: The live monitor holds nothing: it must be gone sooner.
MONITOR_STOP_BOUND = 2.5
#: How long after the broker stops under a commit the stop comes (seconds).
STOP_UNDER_COMMIT_AFTER = 1.0
#: Bounds of the waits below (seconds).
LOGGED_TIMEOUT = 60
CATCH_UP_TIMEOUT = 90
IDLE_EXIT_TIMEOUT = 120
TARGET = "accounting"


@pytest.fixture
def kafka(own_kafka: services.Service) -> Iterator[services.Service]:
    """The module's broker, up at the start and at the end of each test."""
    services.control(own_kafka, "up")
    yield own_kafka
    services.control(own_kafka, "up")


def _env(pipeline: Pipeline, **more: str) -> dict[str, str]:
    return cli_env(
        pipeline.bootstrap,
        pipeline.prefix,
        QUEUESTREAM_SOURCE_URL=pipeline.source_url,
        QUEUESTREAM_SETTLE_SECONDS="0",
        QUEUESTREAM_PARTITIONS="3",
        QUEUESTREAM_RETRY_BACKOFF_SECONDS="0.5",
        QUEUESTREAM_TARGET_RETRY_MAX_SECONDS="2",
        **more,
    )


def _stopped_waiting(
    args: list[str], env: dict[str, str], tmp_path: Path, commands: list[LoggedCommand]
) -> float:
    """``queuestream ARGS`` started while the broker is down (systemd restarting it, say)
    and stopped as it waits for the broker: the seconds from SIGTERM to its exit 0."""
    waiting = LoggedCommand(args, env, tmp_path / f"{args[0]}-started-while-down.log")
    commands.append(waiting)
    waiting.wait_logged("does not answer yet", timeout=LOGGED_TIMEOUT)
    return waiting.assert_stops_within(STOP_BOUND)


def test_a_consumer_stopped_while_the_broker_is_down_exits_at_once_and_resumes(
    kafka: services.Service, sqlite_url: str, unique: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(sqlite_url, kafka.address, unique, partitions=3)
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    env = _env(pipeline, QUEUESTREAM_IDLE_SECONDS="2")
    consume = ["consume", TARGET, "--target", target_url]
    tables = set(target_named(TARGET).tables)
    published: list[str] = []

    def publish(actions: int) -> None:
        pipeline.simulate(actions, per_transaction=5)
        published.extend(
            r.refresh_id for r in pipeline.refresh() if any(r.counts.get(t) for t in tables)
        )

    commands: list[LoggedCommand] = []
    took: dict[str, float] = {}
    try:
        publish(60)
        running = LoggedCommand(consume, env, tmp_path / "consume-1.log")
        commands.append(running)
        wait_for(
            lambda: pipeline.verify(TARGET, target_url).ok,
            timeout=CATCH_UP_TIMEOUT,
            interval=0.5,
            message="the first refresh applied",
            # The consumer may not have made the target's tables yet.
            ignore=(sa.exc.DBAPIError, ConfigurationError),
        )
        publish(60)  # applied or not by the time the broker stops: either way once
        services.control(kafka, "down")
        took["running"] = running.assert_stops_within(STOP_BOUND)

        took["started while down"] = _stopped_waiting(consume, env, tmp_path, commands)

        services.control(kafka, "up")
        publish(40)
        resumed = LoggedCommand([*consume, "--until-idle"], env, tmp_path / "consume-3.log")
        commands.append(resumed)
        assert resumed.process.wait(timeout=IDLE_EXIT_TIMEOUT) == 0, resumed.output()[-3000:]
    finally:
        for command in commands:
            command.close()
        pipeline.close()
    report = pipeline.verify(TARGET, target_url)
    assert report.ok, report.as_dict()
    assert_each_refresh_once(pipeline, TARGET, target_url, published)
    print(f"seconds from SIGTERM to exit: {took}")


def test_produce_stopped_while_the_broker_is_down_exits_at_once_and_loses_nothing(
    kafka: services.Service, sqlite_url: str, unique: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(sqlite_url, kafka.address, unique, partitions=3)
    env = _env(pipeline)
    produce = ["produce", "--interval", "1"]
    commands: list[LoggedCommand] = []
    took: dict[str, float] = {}
    try:
        pipeline.simulate(100)
        running = LoggedCommand(produce, env, tmp_path / "produce-1.log")
        commands.append(running)
        wait_all_published(pipeline.source, kafka.address, unique, running.assert_running)
        services.control(kafka, "down")
        pipeline.simulate(50)  # changes the refresh in hand cannot publish
        # Stopped while it waits for the broker: between two attempts at the refresh
        # (the first one waited 15 s) or, when the broker went as a refresh (one a
        # second, empty ones too) was committing, in the commit's wait for an answer.
        running.wait_logged(
            "publishing the refresh failed", "commit not acknowledged yet", timeout=LOGGED_TIMEOUT
        )
        took["running"] = running.assert_stops_within(STOP_BOUND)

        took["started while down"] = _stopped_waiting(produce, env, tmp_path, commands)

        services.control(kafka, "up")
        pipeline.simulate(30)
        resumed = LoggedCommand(produce, env, tmp_path / "produce-3.log")
        commands.append(resumed)
        wait_all_published(pipeline.source, kafka.address, unique, resumed.assert_running)
        resumed.assert_stops_within(STOP_BOUND)
        published, _ = committed_changes(kafka.address, unique)
        assert_exactly_once(published, source_versions(pipeline.source))
    finally:
        for command in commands:
            command.close()
        pipeline.close()
    print(f"seconds from SIGTERM to exit: {took}")


def test_the_live_monitor_stopped_while_the_broker_is_down_exits_at_once(
    kafka: services.Service, sqlite_url: str, unique: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(sqlite_url, kafka.address, unique, partitions=3)
    try:
        pipeline.simulate(20)
        pipeline.refresh()
        args = ["monitor", "--interval", "1"]
        monitor = LoggedCommand(args, _env(pipeline), tmp_path / "monitor.log")
        try:
            monitor.wait_logged("Last batch", timeout=LOGGED_TIMEOUT)
            services.control(kafka, "down")
            took = monitor.assert_stops_within(MONITOR_STOP_BOUND)
        finally:
            monitor.close()
    finally:
        pipeline.close()
    print(f"seconds from SIGTERM to exit: {took:.1f}")


def test_a_commit_the_broker_stops_under_gives_up_once_stopped_and_commits_nothing_half(
    kafka: services.Service, unique: str
) -> None:
    """The refresh in hand of a ``produce`` told to stop: its body has sent, the broker
    stops before the commit is acknowledged. The commit waits until ``stop`` and then
    gives up (the outcome is unknown: the next producer's ``init_transactions`` settles
    it); closing drops what was queued. Either every message commits or none does."""
    settings = producer_settings("sqlite://", kafka.address, unique)
    topic = f"{unique}.orders"
    ensure_topics(settings)
    stop = threading.Event()
    publisher = TransactionalPublisher(settings, stop=stop)
    messages = 50
    stopped_at: list[float] = []

    def sigterm() -> None:
        stopped_at.append(time.monotonic())
        stop.set()

    stopping = threading.Timer(STOP_UNDER_COMMIT_AFTER, sigterm)

    def body(send: Send) -> None:
        for n in range(messages):
            send(topic, str(n).encode(), f"value {n}".encode(), n % 3)
        services.control(kafka, "down")  # the sends are queued or in flight
        stopping.start()  # SIGTERM, while the commit below waits for the broker

    try:
        with pytest.raises(CommitOutcomeUnknownError):
            publisher.transaction(body)
        publisher.close()
        took = time.monotonic() - stopped_at[0]
        assert took < STOP_BOUND, f"{took:.1f}s from the stop to the publisher closed"
    finally:
        stopping.cancel()
        services.control(kafka, "up")
    TransactionalPublisher(settings).close()  # init_transactions settles the transaction
    keys = sorted(int(m.key() or b"-1") for m in committed_messages(kafka.address, [topic]))
    assert keys in ([], list(range(messages))), f"half a transaction committed: {keys}"
    print(f"seconds from the stop to the publisher closed: {took:.1f}")


def test_a_group_member_with_a_commit_waiting_for_the_broker_closes_within_its_bound(
    kafka: services.Service, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """librdkafka's close waits for every offset commit in flight to be answered: one
    waiting for a coordinator that went away holds it for ``session_timeout_ms``, and a
    commit sent just as the broker went down held a stopped ``consume`` for good (CI,
    0.9.7). ``close_consumer`` goes on without it after :data:`CLOSE_SECONDS`."""
    settings = producer_settings("sqlite://", kafka.address, unique)
    assert settings.session_timeout_ms / 1000 > CLOSE_SECONDS + 2, "no wait to cut short"
    ensure_topics(settings)
    topic = f"{unique}.orders"
    producer = Producer({"bootstrap.servers": kafka.address})
    for n in range(3):
        producer.produce(topic, str(n).encode(), partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer(consumer_config(settings, f"{unique}-close"))
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.set())

    def joined() -> bool:
        consumer.poll(0.1)
        return assigned.is_set()

    wait_for(joined, timeout=LOGGED_TIMEOUT, interval=0.0, message="the partitions assigned")
    consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    services.control(kafka, "down")
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=True)
    started = time.monotonic()
    close_consumer(consumer, "a member of the group")
    took = time.monotonic() - started
    assert took < CLOSE_SECONDS + 1.0, f"closing took {took:.1f}s"
    # Given up, not finished in time: librdkafka still waited for the commit.
    assert "closing a member of the group: Kafka did not answer within" in caplog.text
    print(f"seconds to close: {took:.1f}")
