"""The producer benchmark's ceiling: the same committed bytes, produced by a plain Producer.

The messages of a refresh are read back (:func:`read_back`, in a produce-like
order) and produced again, byte for byte to the same partitions, by a plain
confluent-kafka Producer with ``queuestream.kafka_clients.producer_config``
(idempotent, transactional, same batching and compression) in one transaction
timed from begin to commit (:func:`ceiling`).
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from bench.errors import Deadline
from bench.readback import read_committed
from bench.scratch import ready_topics
from queuestream.kafka_clients import producer_config
from queuestream.settings import Settings
from queuestream.tables import BATCHES, TABLES, topic_for

__all__ = ["Message", "ceiling", "read_back"]


Message = tuple[str, int, bytes | None, bytes | None]  # (topic suffix, partition, key, value)


def read_back(bootstrap: str, prefix: str, deadline: Deadline) -> list[Message]:
    """Every committed message under ``prefix``, in a produce-like order.

    BEGIN marker, then each table in refresh order with its partitions
    interleaved (each partition keeps its own order), then END.
    """
    suffixes = [spec.name for spec in TABLES] + [BATCHES]
    found = read_committed(bootstrap, [topic_for(prefix, s) for s in suffixes], deadline)

    def messages(suffix: str, topic: str, partition: int) -> list[Message]:
        return [(suffix, partition, key, value) for _, _, key, value in found[(topic, partition)]]

    batches = messages(BATCHES, topic_for(prefix, BATCHES), 0)
    ordered: list[Message] = batches[:1]
    for spec in TABLES:
        topic = topic_for(prefix, spec.name)
        streams = [messages(spec.name, t, p) for t, p in sorted(found) if t == topic]
        longest = max((len(s) for s in streams), default=0)
        for i in range(longest):
            ordered.extend(s[i] for s in streams if i < len(s))
    ordered.extend(batches[1:])
    return ordered


def ceiling(messages: list[Message], settings: Settings) -> float:
    """Produce ``messages`` with a plain transactional Producer; seconds begin -> commit."""
    ready_topics(settings)
    producer = Producer(producer_config(settings))
    producer.init_transactions(60)
    prefix = settings.topic_prefix
    topics = {suffix: topic_for(prefix, suffix) for suffix in [t.name for t in TABLES] + [BATCHES]}
    produce = producer.produce
    poll = producer.poll
    started = time.perf_counter()
    producer.begin_transaction()
    for suffix, partition, key, value in messages:
        topic = topics[suffix]
        while True:
            try:
                produce(topic, value, key, partition)
                break
            except BufferError:
                poll(0.05)
    producer.commit_transaction(120)
    seconds = time.perf_counter() - started
    producer.flush(10)
    return seconds
