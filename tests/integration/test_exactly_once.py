"""Promise 2: exactly once into Kafka, with the producer killed (SIGKILL) at every stage.

The producer runs as a real ``queuestream produce`` process against a source holding
tens of thousands of changed rows, so that one refresh takes a noticeable time. It is
killed

(a) right after start, once it has created its topics but before any BEGIN exists,
(b) during a refresh: a read_uncommitted consumer sees the refresh's BEGIN and some of
    its change events, but no commit yet,
(c) right after a refresh commits: a read_committed consumer sees its END,
(b2) during a later refresh (the watermark and overlap digests are in play),

with new source activity between the kills. After a final restart, a read_committed
consumer must see every source row version exactly once, while a read_uncommitted
consumer shows that the killed refreshes really had written (now aborted) events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from producer.simulator import Simulator
from queuestream.databases import create_engine, is_postgres
from queuestream.settings import Settings
from queuestream.tables import TABLES
from schemas.avro import AvroCodec
from tests.helpers import run_cli, wait_for
from tests.integration.kafka_readback import committed_changes, located
from tests.integration.source_versions import assert_exactly_once, source_versions

COMMAND = [sys.executable, "-m", "queuestream.cli"]
UTC_ZONE = ZoneInfo("UTC")
RUN_TIMEOUT = 120
T = TypeVar("T")

#: Simulated actions (≈2 rows each) before the first start, per backend: enough for a
#: first refresh of ≈1-2 s, so that a kill can land inside it.
FIRST_LOAD = {"sqlite": 20_000, "postgresql": 12_000}
#: Actions before the refresh that is killed the second time (b2).
SECOND_LOAD = {"sqlite": 10_000, "postgresql": 8_000}


class TopicWatcher:
    """Follows the batches topic and every change topic of a prefix from offset 0."""

    def __init__(self, bootstrap: str, prefix: str, isolation: str) -> None:
        self.prefix = prefix
        # The producer encodes with the registry the environment names, if any.
        self.codec = AvroCodec.from_url(prefix, Settings().schema_registry_url)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"watch-{uuid.uuid4().hex}",
                "isolation.level": isolation,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
            }
        )
        metadata = self.consumer.list_topics(timeout=10)
        topics = [f"{prefix}.batches", *(f"{prefix}.{t.name}" for t in TABLES)]
        self.partitions = [
            TopicPartition(topic, p, 0)
            for topic in topics
            for p in metadata.topics[topic].partitions
        ]
        self.consumer.assign(self.partitions)
        self.markers: list[dict[str, Any]] = []
        self.events: Counter[str] = Counter()  # refresh id -> change events seen
        self._at_end: set[tuple[str, int]] = set()

    def poll(self) -> None:
        for message in self.consumer.consume(2000, 0.02):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(located(message)[:2])
                    continue
                msg = f"watching {self.prefix}.*: {error.str()}"
                raise AssertionError(msg)
            topic, partition, _ = located(message)
            self._at_end.discard((topic, partition))
            table = topic[len(self.prefix) + 1 :]
            value = self.codec.decode(table, "value", message.value())
            assert value is not None
            if table == "batches":
                self.markers.append(value)
            else:
                self.events[value["source"]["refresh_id"]] += 1

    def drain(self, timeout: float = 60.0) -> TopicWatcher:
        """Poll until every partition has reported its end."""
        wanted = {(tp.topic, tp.partition) for tp in self.partitions}

        def at_end() -> bool:
            self.poll()
            return wanted <= self._at_end

        wait_for(
            at_end,
            timeout=timeout,
            interval=0,
            message=f"reading {self.prefix}.* to its end",
        )
        return self

    def ids(self, status: str) -> list[str]:
        return [m["refresh_id"] for m in self.markers if m["status"] == status]

    def ended(self) -> list[str]:
        """Poll, then the ids of the refreshes with an END."""
        self.poll()
        return self.ids("END")

    def open_refresh(self, not_in: set[str]) -> str | None:
        """A refresh with a BEGIN and at least one change event, but no END yet."""
        self.poll()
        ended = set(self.ids("END"))
        for refresh_id in self.ids("BEGIN"):
            if refresh_id not in ended and refresh_id not in not_in and self.events[refresh_id]:
                return refresh_id
        return None

    def close(self) -> None:
        self.consumer.close()


class ProducerProcess:
    """``queuestream produce`` as a child process, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("a")
        self.process = subprocess.Popen(
            [*COMMAND, "produce", "--interval", "0.5"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(timeout=30)
        self._file.close()
        assert code == -signal.SIGKILL, (
            f"the producer ended by itself (exit {code}) before the kill:\n{self.log.read_text()}"
        )

    def assert_running(self) -> None:
        assert self.process.poll() is None, (
            f"the producer exited ({self.process.returncode}):\n{self.log.read_text()}"
        )

    def running_and(self, condition: Callable[[], T]) -> Callable[[], T]:
        """For wait_for: ``condition``, failing at once if the producer has exited."""

        def check() -> T:
            self.assert_running()
            return condition()

        return check

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._file.close()


def _simulate(url: str, actions: int, seed: int) -> None:
    engine = create_engine(url, writer=True)
    try:
        Simulator(engine, UTC_ZONE, seed=seed).run(actions, per_transaction=200)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_at_any_point_loses_nothing_and_duplicates_nothing(
    source_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    engine = create_engine(source_url)
    backend = "postgresql" if is_postgres(engine) else "sqlite"
    env = {
        **os.environ,
        "QUEUESTREAM_SOURCE_URL": source_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "QUEUESTREAM_TOPIC_PREFIX": unique,
        "QUEUESTREAM_TRANSACTIONAL_ID": f"{unique}-producer",
        "QUEUESTREAM_PARTITIONS": "3",
        # No writer runs while the producer refreshes: the watermark may reach the clock.
        "QUEUESTREAM_SETTLE_SECONDS": "0",
        "QUEUESTREAM_PG_CLOCK_ALLOWANCE_SECONDS": "0",
    }
    log = tmp_path / "producer.log"
    started = time.monotonic()
    _simulate(source_url, FIRST_LOAD[backend], seed=1)
    timings = {"first load": time.monotonic() - started}
    running: list[ProducerProcess] = []
    watchers: list[TopicWatcher] = []

    def start() -> ProducerProcess:
        producer = ProducerProcess(env, log)
        running.append(producer)
        return producer

    try:
        # (a) Killed before publishing anything: it has created its topics, no BEGIN yet.
        producer = start()
        wait_for(
            producer.running_and(lambda: "created topic" in log.read_text()),
            timeout=60,
            interval=0.005,
            message="the producer created its topics",
        )
        producer.sigkill()
        uncommitted = TopicWatcher(kafka_bootstrap, unique, "read_uncommitted")
        watchers.append(uncommitted)
        uncommitted.drain()
        assert uncommitted.markers == [], "(a) was meant to kill before the first BEGIN"
        assert not uncommitted.events

        # (b) Killed inside the first refresh's transaction.
        producer = start()
        killed_first = wait_for(
            producer.running_and(lambda: uncommitted.open_refresh(set())),
            timeout=60,
            interval=0,
            message="(b) a BEGIN and events of an uncommitted refresh",
        )
        assert killed_first is not None  # wait_for returns a truthy result
        producer.sigkill()
        timings["(b) kill"] = time.monotonic() - started

        _simulate(source_url, 1_000, seed=2)

        # (c) Killed right after a refresh committed.
        committed = TopicWatcher(kafka_bootstrap, unique, "read_committed")
        watchers.append(committed)
        producer = start()
        wait_for(
            producer.running_and(committed.ended),
            timeout=90,
            interval=0,
            message="(c) the END of a committed refresh",
        )
        producer.sigkill()
        timings["(c) kill"] = time.monotonic() - started
        committed_first = committed.ids("END")
        assert killed_first not in committed_first

        _simulate(source_url, SECOND_LOAD[backend], seed=3)

        # (b2) Killed inside a later refresh, which starts from a committed watermark.
        seen = {killed_first, *committed.ids("END"), *uncommitted.ids("BEGIN")}
        producer = start()
        killed_later = wait_for(
            producer.running_and(lambda: uncommitted.open_refresh(seen)),
            timeout=60,
            interval=0,
            message="(b2) a BEGIN and events of a later open refresh",
        )
        assert killed_later is not None
        producer.sigkill()
        timings["(b2) kill"] = time.monotonic() - started

        _simulate(source_url, 500, seed=4)

        # Restart once more and let it finish one refresh.
        done = run_cli(["refresh", "--json"], env, RUN_TIMEOUT)
        assert done.returncode == 0, done.stderr
        [final] = json.loads(done.stdout)
        assert final["events"] > 0
        timings["final refresh"] = time.monotonic() - started
    finally:
        for producer in running:
            producer.cleanup()
        for watcher in watchers:
            watcher.close()

    # Consumers reading committed data see each source row version exactly once.
    published, values = committed_changes(kafka_bootstrap, unique)
    expected = source_versions(engine)
    engine.dispose()
    assert len(expected) > 2 * FIRST_LOAD[backend] * 0.8
    assert_exactly_once(published, expected)

    # The kills really hit open transactions: their events exist, aborted.
    everything = TopicWatcher(kafka_bootstrap, unique, "read_uncommitted")
    final_markers = TopicWatcher(kafka_bootstrap, unique, "read_committed")
    try:
        everything.drain()
        final_markers.drain()
    finally:
        everything.close()
        final_markers.close()
    committed_ids = Counter(v["source"]["refresh_id"] for _, _, v in values)
    for killed in (killed_first, killed_later):
        assert everything.events[killed] > 0, f"refresh {killed} left no aborted events"
        assert committed_ids[killed] == 0, f"aborted refresh {killed} is visible as committed"
        assert killed not in final_markers.ids("END")
        assert killed in everything.ids("BEGIN")
    assert sum(everything.events.values()) > sum(published.values())
    # Each committed refresh has its END, whose counts match what was committed.
    ends = {m["refresh_id"]: m for m in final_markers.markers if m["status"] == "END"}
    assert set(committed_ids) <= set(ends)
    for refresh_id, count in committed_ids.items():
        assert ends[refresh_id]["event_count"] == count
    assert committed_first[0] in ends
    assert final_markers.ids("BEGIN") == final_markers.ids("END")  # no dangling refresh
    print(
        f"{backend}: {len(expected)} row versions; aborted events "
        f"{everything.events[killed_first]} + {everything.events[killed_later]}; {timings}"
    )
