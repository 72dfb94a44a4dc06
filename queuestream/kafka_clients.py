"""Kafka client configuration and topics, shared by the producer and the consumers.

User options from ``settings.kafka`` pass through to librdkafka untouched and
win over the defaults here, except the few that the guarantees depend on
(transactions, isolation level, manual commits), which are always set.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from queuestream.errors import BrokerUnavailableError, ConfigurationError
from queuestream.settings import Settings
from queuestream.tables import BATCHES, TABLES, topic_for

__all__ = [
    "BATCH_MESSAGE_MAX_BYTES",
    "LIBRDKAFKA_LOGGER",
    "admin_client",
    "batches_topic",
    "change_topics",
    "consumer_config",
    "create_topics",
    "ensure_topics",
    "idempotent_producer",
    "producer_config",
    "transactional_producer",
]

log = logging.getLogger(__name__)

#: The END marker can carry many overlap digests; allow it to be large.
BATCH_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
_ADMIN_TIMEOUT = 15.0


#: librdkafka's own log lines go here instead of straight to stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("queuestream.librdkafka")


def _base(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, "logger": LIBRDKAFKA_LOGGER}


def producer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        **_base(settings),
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": BATCH_MESSAGE_MAX_BYTES + 65_536,
        "message.timeout.ms": 120_000,
        **settings.kafka,
    }
    config.update(
        {
            "transactional.id": settings.effective_transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "transaction.timeout.ms": settings.transaction_timeout_ms,
        }
    )
    return config


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **_base(settings),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": BATCH_MESSAGE_MAX_BYTES * 2,
        "max.partition.fetch.bytes": BATCH_MESSAGE_MAX_BYTES + 65_536,
        # A dead member's partitions move within 10 s (README, "Consumer groups").
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        **settings.kafka,
        **extra,
    }
    config.update({"isolation.level": "read_committed", "enable.auto.commit": False})
    for key in (
        "transactional.id",
        "linger.ms",
        "batch.num.messages",
        "batch.size",
        "compression.type",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "message.timeout.ms",
        "acks",
        "enable.idempotence",
        "transaction.timeout.ms",
    ):
        config.pop(key, None)  # producer-only keys from settings.kafka
    return config


def idempotent_producer(settings: Settings) -> Producer:
    """A plain (non-transactional) producer that writes each message once, e.g. dead letters."""
    config: dict[str, Any] = {**_base(settings), "linger.ms": 5, **settings.kafka}
    for key in (
        "transactional.id",
        "transaction.timeout.ms",
        "isolation.level",
        "enable.auto.commit",
    ):
        config.pop(key, None)
    config.update({"enable.idempotence": True, "acks": "all"})
    return Producer(config)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(_base(settings))


def transactional_producer(settings: Settings) -> Producer:
    return Producer(producer_config(settings))


def change_topics(settings: Settings) -> list[str]:
    return [topic_for(settings.topic_prefix, t.name) for t in TABLES]


def batches_topic(settings: Settings) -> str:
    return topic_for(settings.topic_prefix, BATCHES)


def _describe(admin: AdminClient, settings: Settings) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=settings.broker_timeout_seconds)
    except KafkaException as exc:
        msg = (
            f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({exc.args[0]}); "
            "start it (make kafka-up) or set KAFKA_BOOTSTRAP_SERVERS"
        )
        raise BrokerUnavailableError(msg) from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


def create_topics(admin: AdminClient, topics: list[NewTopic]) -> None:
    """Create ``topics``; one that already exists is fine (another client made it)."""
    for topic, future in admin.create_topics(topics, operation_timeout=_ADMIN_TIMEOUT).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                msg = f"cannot create topic {topic}: {exc.args[0].str()}"
                raise BrokerUnavailableError(msg) from None


def ensure_topics(settings: Settings, admin: AdminClient | None = None) -> int:
    """Create the change topics and the batches topic where missing.

    Change topics get ``settings.partitions`` partitions and keep history
    (``retention.ms`` -1 by default); the batches topic has one partition so that
    its markers keep refresh order. Existing change topics must all have the same
    partition count, or customers would not be co-partitioned. Returns that count.
    """
    admin = admin or admin_client(settings)
    existing = _describe(admin, settings)
    retention = str(settings.retention_ms)
    wanted = {
        topic: NewTopic(
            topic,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            config={"retention.ms": retention, "cleanup.policy": "delete"},
        )
        for topic in change_topics(settings)
    }
    batches = batches_topic(settings)
    wanted[batches] = NewTopic(
        batches,
        num_partitions=1,
        replication_factor=settings.replication_factor,
        config={
            # The END markers hold the producer's progress: never deleted by age.
            "retention.ms": "-1",
            "cleanup.policy": "delete",
            "max.message.bytes": str(BATCH_MESSAGE_MAX_BYTES + 65_536),
        },
    )
    missing = [new for topic, new in wanted.items() if topic not in existing]
    if missing:
        create_topics(admin, missing)
        existing = _describe(admin, settings)
    counts = {topic: existing.get(topic) for topic in change_topics(settings)}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{t}={n}" for t, n in counts.items())
        msg = (
            f"change topics have different partition counts ({listing}); co-partitioning by "
            "CustomerID needs one count: add partitions so that all are equal"
        )
        raise ConfigurationError(msg)
    return int(next(iter(counts.values())) or settings.partitions)
