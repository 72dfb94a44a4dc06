"""Promise 4 (and 3) against a real broker: a consumer group survives losing a member.

Three ``queuestream consume accounting`` processes form one group on a PostgreSQL
target while ``queuestream produce`` publishes what a simulator keeps writing into a
PostgreSQL source. Once every member has applied something and the group has
settled (the members' logs name the partitions each owns), one member is killed with
SIGKILL in the middle of the stream; the group rebalances (the default session
timeout, 6 s) and the two survivors take over its partitions from the offsets stored
in the target: a backlog of refreshes that the survivors already applied on their own
partitions, where nothing new arrives any more. In the end:

- a survivor applied a refresh on one of the killed member's partitions within
  10 seconds of the kill (issue #13: with librdkafka's 45 s session it took 48 s);
- the target equals what the source says it should hold (``verify``);
- every committed change event is covered by exactly one sync-log range: nothing
  was applied twice, nothing skipped;
- the survivors applied the partitions the killed member had, from where it stopped;
- the survivors leave on SIGTERM with exit code 0, and the group offsets in Kafka
  equal the offsets stored in the target.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from consumers import sync_log, target_named
from consumers.verify import verify
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.sync_schema import create_source_schema
from queuestream.tables import topic_for
from tests.helpers import producer_settings, wait_for
from tests.integration.kafka_readback import committed_messages, located
from tests.integration.pipeline import group_offsets, stored_offsets

COMMAND = [sys.executable, "-m", "queuestream.cli"]
TARGET = "accounting"
MEMBERS = 3
PARTITIONS = 6
#: A survivor applies a killed member's partitions within this many seconds (issue #13).
FAILOVER_SECONDS = 10.0

#: Simulated business actions a second, while the test runs (5 per source transaction).
SIM_RATE = 40.0
#: The simulator keeps writing this long after the kill, then stops: before the group
#: notices (session timeout), so that the survivors take over a backlog on the killed
#: member's partitions while their own partitions are caught up and quiet. A refresh of
#: that backlog also has events on the survivors' own partitions, applied long before:
#: nothing new arrives there to show that those partitions are past it.
WRITE_AFTER_KILL = 3.0
#: Bounds of the waits below (seconds).
ALL_MEMBERS_APPLIED_TIMEOUT = 60
#: Long enough to measure a failover with librdkafka's own 45 s session too.
FAILOVER_TIMEOUT = 60
CATCH_UP_TIMEOUT = 60
STOP_TIMEOUT = 20

Range = tuple[int, int]
Where = tuple[str, int]  # (topic, partition)

#: consumers.ownership's log lines: "assigned t.orders[0@15,1@start], t.payments[0,1]".
_OWNERSHIP = re.compile(r"consumers\.ownership: (?P<how>assigned|revoked) (?P<partitions>.*)$")
_PARTITIONS = re.compile(r"([\w.-]+)\[([^\]]*)\]")


class Member:
    """One ``queuestream consume`` child process, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._file = log.open("w")
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )
        # ConsumerRuntime.member: host:pid of the process that applied a batch.
        self.member = f"{socket.gethostname()}:{self.process.pid}"

    def output(self) -> str:
        self._file.flush()
        return f"--- {self.name} ({self.member}) ---\n{self.log.read_text()}"

    def owned(self) -> set[Where]:
        """The partitions its log says it owns now (Ownership's assigned / revoked lines)."""
        self._file.flush()
        owned: set[Where] = set()
        for line in self.log.read_text().splitlines():
            change = _OWNERSHIP.search(line)
            if change is None:
                continue
            partitions = {
                (topic, int(p.split("@")[0]))
                for topic, listed in _PARTITIONS.findall(change["partitions"])
                for p in listed.split(",")
            }
            owned = owned | partitions if change["how"] == "assigned" else owned - partitions
        return owned

    def assert_running(self) -> None:
        assert self.process.poll() is None, (
            f"{self.name} exited ({self.process.returncode}):\n{self.output()}"
        )

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._file.close()


def _read_log(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sync_log.read(conn, TARGET)
    finally:
        engine.dispose()


def _ranges(entries: list[dict[str, Any]]) -> dict[Where, list[tuple[Range, dict[str, Any]]]]:
    """Every sync-log offset range by topic partition, with the entry it belongs to."""
    found: dict[Where, list[tuple[Range, dict[str, Any]]]] = defaultdict(list)
    for entry in entries:
        for topic, partitions in entry["offsets"].items():
            for partition, (first, last) in partitions.items():
                found[(topic, int(partition))].append(((first, last), entry))
    return found


@pytest.mark.slow
def test_a_group_that_loses_a_member_mid_stream_applies_everything_once(
    postgres_database: Callable[[str], str], kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    source_url = postgres_database("source")
    target_url = postgres_database("target")
    group = f"{unique}-{TARGET}"
    topics = [topic_for(unique, t) for t in target_named(TARGET).tables]
    source = create_engine(source_url, writer=True)
    create_source_schema(source)

    base_env = {
        **os.environ,
        "QUEUESTREAM_SOURCE_URL": source_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "QUEUESTREAM_TOPIC_PREFIX": unique,
        "QUEUESTREAM_TRANSACTIONAL_ID": f"{unique}-producer",
        "QUEUESTREAM_PARTITIONS": str(PARTITIONS),
        "QUEUESTREAM_SETTLE_SECONDS": "0.2",
        "QUEUESTREAM_PG_CLOCK_ALLOWANCE_SECONDS": "0.5",
        "QUEUESTREAM_RETRY_BACKOFF_SECONDS": "0.5",
    }
    # The group's session and heartbeats are queuestream's defaults (or the environment's).
    consumer_env = base_env
    stop_writing = threading.Event()
    sim_errors: list[BaseException] = []

    def simulate() -> None:
        try:
            Simulator(source, ZoneInfo("UTC"), seed=11).run(
                1_000_000, rate=SIM_RATE, per_transaction=5, stop=stop_writing
            )
        except BaseException as exc:
            sim_errors.append(exc)

    simulator = threading.Thread(target=simulate, name="simulator", daemon=True)
    children: list[Member] = []
    timings: dict[str, float] = {}
    try:
        simulator.start()
        producer = Member(
            "producer", base_env, ["produce", "--interval", "0.5"], tmp_path / "producer.log"
        )
        children.append(producer)
        members = [
            Member(
                f"consumer{i}",
                consumer_env,
                ["consume", TARGET, "--target", target_url, "--group", group],
                tmp_path / f"consumer{i}.log",
            )
            for i in range(MEMBERS)
        ]
        children.extend(members)

        def everyone_running() -> bool:
            for child in children:
                child.assert_running()
            return True

        def appliers() -> set[str]:
            everyone_running()
            return {e["member"] for e in _read_log(target_url)}

        wait_for(
            lambda: {m.member for m in members} <= appliers(),
            timeout=ALL_MEMBERS_APPLIED_TIMEOUT,
            interval=0.2,
            message="every member of the group applied a refresh",
            ignore=(sa.exc.DBAPIError,),  # the sync log table is not there yet
        )
        timings["all members applied"] = time.monotonic() - started

        # The group has settled: the three members own every partition between them.
        every = {(t, p) for t in topics for p in range(PARTITIONS)}

        def settled() -> bool:
            everyone_running()
            owned = [m.owned() for m in members]
            split = all(owned) and sum(map(len, owned)) == len(every)
            return split and set().union(*owned) == every

        wait_for(
            settled, timeout=ALL_MEMBERS_APPLIED_TIMEOUT, interval=0.2, message="a settled group"
        )

        # SIGKILL one member mid-stream: no goodbye to the group, maybe mid-batch.
        victim, survivors = members[0], members[1:]
        victim.process.send_signal(signal.SIGKILL)
        assert victim.process.wait(timeout=10) == -signal.SIGKILL, victim.output()
        killed_at = time.monotonic()
        killed_wall = datetime.now(UTC)
        timings["kill"] = killed_at - started
        victim_owned = victim.owned()
        children.remove(victim)
        victim.cleanup()

        # Failover: from the kill to the first refresh a survivor applies on one of the
        # partitions the killed member owned (its sync-log row, read every 0.2 s). The
        # simulator keeps writing meanwhile for WRITE_AFTER_KILL seconds, then stops.
        survivor_ids = {m.member for m in survivors}
        watch = create_engine(target_url)

        def taken_over_once() -> bool:
            everyone_running()
            if time.monotonic() - killed_at >= WRITE_AFTER_KILL:
                stop_writing.set()
            with watch.connect() as conn:
                entries = sync_log.read(conn, TARGET)
            later = [
                e for e in entries if e["member"] in survivor_ids and e["applied_at"] > killed_wall
            ]
            return bool(victim_owned & set(_ranges(later)))

        try:
            wait_for(
                taken_over_once,
                timeout=FAILOVER_TIMEOUT,
                interval=0.2,
                message=f"a survivor applying one of the killed member's {sorted(victim_owned)}",
            )
        finally:
            watch.dispose()
        failover = time.monotonic() - killed_at
        timings["failover"] = failover
        assert failover <= FAILOVER_SECONDS, (
            f"a survivor applied the killed member's partitions {failover:.1f}s after the "
            f"kill, not within {FAILOVER_SECONDS:g}s"
        )

        wait_for(
            lambda: everyone_running() and time.monotonic() - killed_at >= WRITE_AFTER_KILL,
            timeout=WRITE_AFTER_KILL + 5,
            interval=0.2,
            message="the simulator writing after the kill",
        )
        stop_writing.set()
        simulator.join(timeout=30)
        assert not simulator.is_alive(), "the simulator did not stop"
        assert not sim_errors, f"the simulator failed: {sim_errors!r}"
        timings["writes stopped"] = time.monotonic() - started

        settings = producer_settings(
            source_url, kafka_bootstrap, unique, target_url=target_url, partitions=PARTITIONS
        )
        last_report: list[Any] = []

        def caught_up() -> bool:
            everyone_running()
            report = verify(settings, TARGET)
            last_report[:] = [report]
            return report.ok

        try:
            wait_for(
                caught_up,
                timeout=CATCH_UP_TIMEOUT,
                interval=1.0,
                message="the target equals the source (verify)",
            )
        except AssertionError:
            report = last_report[0].as_dict() if last_report else None
            logs = "\n".join(c.output() for c in children)
            print(f"last verify report: {json.dumps(report, default=str, indent=1)}\n{logs}")
            raise
        timings["verified"] = time.monotonic() - started

        # SIGTERM: each survivor finishes its batch, commits and leaves the group.
        for member in survivors:
            member.process.send_signal(signal.SIGTERM)
        for member in survivors:
            try:
                code = member.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, f"{member.name} ended with {code} after SIGTERM:\n{member.output()}"
        timings["survivors stopped"] = time.monotonic() - started
        producer.process.send_signal(signal.SIGTERM)
        producer.process.wait(timeout=STOP_TIMEOUT)
    finally:
        stop_writing.set()
        for child in children:
            child.cleanup()
        simulator.join(timeout=30)
        source.dispose()

    entries = _read_log(target_url)
    by_member = defaultdict(list)
    for entry in entries:
        by_member[entry["member"]].append(entry)
    assert set(by_member) == {m.member for m in members}, (
        f"members that applied batches: {sorted(by_member)}"
    )

    # Each committed event is covered by exactly one sync-log range: applied once.
    ranges = _ranges(entries)
    for where, spans in ranges.items():
        ordered = sorted(spans, key=lambda s: s[0])
        for (a, first), (b, second) in pairwise(ordered):
            assert a[1] < b[0], (
                f"{where}: offsets {a} (refresh {first['refresh_id']} by {first['member']}) "
                f"and {b} (refresh {second['refresh_id']} by {second['member']}) overlap"
            )
    events = committed_messages(kafka_bootstrap, topics)
    assert len(events) > 200, "the stream was meant to carry a few hundred events"
    last_event: dict[Where, int] = {}
    for message in events:
        topic, partition, offset = located(message)
        where = (topic, partition)
        last_event[where] = max(last_event.get(where, -1), offset)
        covering = [r for r, _ in ranges.get(where, []) if r[0] <= offset <= r[1]]
        assert len(covering) == 1, f"{where} offset {offset} is in sync-log ranges {covering}"

    # The survivors took over the partitions the killed member had, from where it stopped:
    # those whose furthest range applied before the kill is the killed member's.
    furthest: dict[Where, tuple[int, str]] = {}
    for where, spans in ranges.items():
        for (_, last), entry in spans:
            if entry["applied_at"] < killed_wall and last > furthest.get(where, (-1, ""))[0]:
                furthest[where] = (last, entry["member"])
    victims = {w: last for w, (last, member) in furthest.items() if member == victim.member}
    assert victims, f"the killed member had applied nothing before the kill: {furthest}"
    taken_over = set()
    for where, reach in victims.items():
        later = sorted(
            (span, entry["member"], entry["applied_at"])
            for span, entry in ranges[where]
            if span[0] > reach
        )
        if last_event[where] > reach:
            assert later, f"nobody applied {where} after {reach}, where the killed member stopped"
            taken_over.add(where)
        for span, member, applied_at in later:
            assert member in {s.member for s in survivors}, (where, span, member)
            assert applied_at > killed_wall, (where, span, member)
    assert taken_over, f"none of the killed member's partitions {sorted(victims)} got more events"

    # Kafka's group offsets (for lag tools) end where the target's own offsets are.
    stored = stored_offsets(target_url, TARGET)
    assert stored == {w: last + 1 for w, last in last_event.items()}
    assert group_offsets(kafka_bootstrap, group, topics, PARTITIONS) == stored
    print(
        f"{len(events)} events, {len(entries)} sync-log rows by "
        f"{ {m: len(v) for m, v in by_member.items()} }; "
        f"taken over: {sorted(taken_over)}; timings {timings}"
    )
