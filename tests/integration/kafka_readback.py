"""Reading back what consumers see: committed messages of whole topics, from offset 0.

``committed_messages`` uses nothing but confluent_kafka (the independent-decoder tests
rely on that); ``committed_changes`` decodes change events with queuestream's codec;
``wait_until_readable`` waits for a committed refresh's markers to reach every partition.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from queuestream.kafka_offsets import list_offsets, partitions_of
from queuestream.settings import Settings
from queuestream.tables import TABLES
from schemas.avro import AvroCodec
from tests.helpers import wait_for

__all__ = [
    "Change",
    "committed_changes",
    "committed_messages",
    "located",
    "message_headers",
    "wait_until_readable",
]

Change = tuple[str, tuple[Any, ...], Any]  # (table, key values, ModifiedDate)

MARKER_GRACE_SECONDS = 3.0
READABLE_TIMEOUT = 30.0  # seconds for commit markers to reach every partition


def located(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a message read from Kafka (never None there:
    confluent_kafka types them optional for messages being produced)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None, message
    return topic, partition, offset


def wait_until_readable(bootstrap: str, topics: list[str]) -> None:
    """Wait until read_committed readers can read every partition of ``topics`` to its end.

    commit_transaction() returns before the commit markers reach every partition; until
    they do, a read_committed reader stops (at the last stable offset) short of events
    that are committed. Polls the last stable offsets until they equal the log ends.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    wanted = dict.fromkeys(partitions_of(admin, topics), latest)

    def ends(isolation: IsolationLevel) -> dict[tuple[str, int], int]:
        found = list_offsets(admin, wanted, "log end", isolation)
        return {where: info.offset for where, info in found.items()}

    wait_for(
        lambda: ends(IsolationLevel.READ_COMMITTED) == ends(IsolationLevel.READ_UNCOMMITTED),
        timeout=READABLE_TIMEOUT,
        interval=0.02,
        message=f"commit markers on every partition of {', '.join(topics)}",
    )


def _log_end(probe: Consumer, tp: TopicPartition, attempts: int = 5) -> int:
    """The partition's high watermark; a leader moving under load is retried."""
    for attempt in range(attempts):
        try:
            return int(probe.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError  # pragma: no cover - the loop returns or raises


def committed_messages(
    bootstrap: str, topics: list[str], *, isolation: str = "read_committed", timeout: float = 60.0
) -> list[Message]:
    """Every message of every partition of ``topics`` up to the current log end, in read order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"readback-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,  # an empty fetch (the end: EOF) answers at once
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        assignments = []
        for topic in topics:
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                msg = f"topic {topic} does not exist"
                raise AssertionError(msg)
            for partition in metadata.topics[topic].partitions:
                assignments.append(TopicPartition(topic, partition, 0))
        # The log ends now, commit markers included: commit_transaction() returns before
        # the markers reach every partition, so a read_committed consumer can hit its end
        # (the last stable offset) just short of a refresh that did commit.
        probe = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"readback-{uuid.uuid4().hex}",
                "isolation.level": "read_uncommitted",
            }
        )  # a read_committed consumer would report the last stable offset instead
        try:
            ends = {(tp.topic, tp.partition): _log_end(probe, tp) for tp in assignments}
        finally:
            probe.close()
        consumer.assign(assignments)
        pending = {(tp.topic, tp.partition) for tp in assignments}
        first_eof: dict[tuple[str, int], float] = {}
        messages: list[Message] = []
        deadline = time.monotonic() + timeout

        def settled(where: tuple[str, int]) -> bool:
            [position] = consumer.position([TopicPartition(*where)])
            if position.offset >= ends[where]:
                return True
            # Still short: markers on the way, or a transaction still open (never waited for).
            return time.monotonic() - first_eof[where] > MARKER_GRACE_SECONDS

        while pending:
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout:g}s reading back; waiting on {sorted(pending)}"
                raise AssertionError(msg)
            message = consumer.poll(0.2)
            if message is None:
                pending -= {
                    where for where in list(pending) if where in first_eof and settled(where)
                }
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    where = located(message)[:2]
                    first_eof.setdefault(where, time.monotonic())
                    if settled(where):
                        pending.discard(where)
                    continue
                raise AssertionError(str(error))
            messages.append(message)
        return messages
    finally:
        consumer.close()


def committed_changes(
    bootstrap: str, prefix: str, *, isolation: str = "read_committed", timeout: float = 60.0
) -> tuple[Counter[Change], list[tuple[str, int, dict[str, Any]]]]:
    """All change events under ``prefix`` up to the current log end.

    Returns a Counter of (table, key, version) of the upserts (c, u, r) and the decoded
    values of every event, deletes included, with their partitions, in the order read
    (tombstones are left out). Decodes with the schema registry the environment
    names (SCHEMA_REGISTRY_URL), as the producers under test encode with it.
    """
    codec = AvroCodec.from_url(prefix, Settings().schema_registry_url)
    tables = {f"{prefix}.{t.name}": t for t in TABLES}
    changes: Counter[Change] = Counter()
    values: list[tuple[str, int, dict[str, Any]]] = []
    messages = committed_messages(bootstrap, list(tables), isolation=isolation, timeout=timeout)
    for message in messages:
        topic, partition, _ = located(message)
        spec = tables[topic]
        if message.value() is None:
            continue  # a delete's tombstone
        value = codec.decode(spec.name, "value", message.value())
        assert value is not None
        values.append((spec.name, partition, value))
        after = value["after"]
        if after is not None:  # deletes (op d) are in ``values`` only
            changes[(spec.name, tuple(after[k] for k in spec.key), after["ModifiedDate"])] += 1
    return changes, values


def message_headers(message: Message) -> dict[str, str]:
    """A consumed message's headers: confluent_kafka reads them as (name, bytes) pairs."""
    headers = message.headers() or []
    assert isinstance(headers, list), headers
    found = {}
    for name, value in headers:
        assert isinstance(value, bytes), (name, value)
        found[name] = value.decode()
    return found
