"""Reading back what consumers see: every committed change event of a topic prefix."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from queuestream.schemas.avro import AvroCodec
from queuestream.tables import TABLES

__all__ = ["Change", "committed_changes"]

Change = tuple[str, tuple[Any, ...], Any]  # (table, key values, ModifiedDate)


def committed_changes(
    bootstrap: str, prefix: str, *, isolation: str = "read_committed", timeout: float = 60.0
) -> tuple[Counter[Change], list[tuple[str, int, dict[str, Any]]]]:
    """All change events under ``prefix`` up to the current log end.

    Returns a Counter of (table, key, version) and the decoded values with their
    partitions, in the order read.
    """
    codec = AvroCodec(prefix)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"readback-{uuid.uuid4().hex}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(timeout=10)
        assignments = []
        for spec in TABLES:
            topic = f"{prefix}.{spec.name}"
            for partition in metadata.topics[topic].partitions:
                assignments.append(TopicPartition(topic, partition, 0))
        consumer.assign(assignments)
        pending = {(tp.topic, tp.partition) for tp in assignments}
        changes: Counter[Change] = Counter()
        values: list[tuple[str, int, dict[str, Any]]] = []
        tables = {f"{prefix}.{t.name}": t for t in TABLES}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                msg = f"timed out reading back {prefix}.*: still waiting on {sorted(pending)}"
                raise AssertionError(msg)
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard((message.topic(), message.partition()))
                    continue
                raise AssertionError(str(message.error()))
            spec = tables[message.topic()]
            value = codec.decode(spec.name, "value", message.value())
            assert value is not None
            after = value["after"]
            changes[(spec.name, tuple(after[k] for k in spec.key), after["ModifiedDate"])] += 1
            values.append((spec.name, message.partition(), value))
        return changes, values
    finally:
        consumer.close()
