"""Dead-letter topics, their headers and the error budget: what producer and consumers share.

A record that cannot be encoded (producer) or decoded or applied (consumers) goes
to ``<topic>.dlq`` (``exigo.orders.dlq``) with the reason in headers, when the
error budget (``--max-errors N``, the seeds' "continue on first N errors") allows.
Each dead letter carries two sets of headers with the same facts:

- queuestream's own, ``queuestream.errors.*``: ``topic``, ``partition``, ``offset``,
  ``timestamp``, ``class``, ``message``, ``reason``, ``table``, ``key`` (JSON),
  ``column``, ``stage`` (``produce``: never published; ``decode`` or ``apply``: a
  consumer refused it) and who refused it (``target`` and ``group`` for a
  consumer, ``producer`` and ``refresh_id`` for the producer);
- Kafka Connect's, ``__connect.errors.*`` (``topic``, ``partition``, ``offset``,
  ``connector.name``, ``task.id``, ``stage``, ``class.name``,
  ``exception.class.name``, ``exception.message``), so that tools written for
  Connect's dead-letter queues read ours. Connect's stage names are used there:
  ``VALUE_CONVERTER`` for a record that cannot be encoded or decoded,
  ``TASK_PUT`` for one a target refused.

A record the producer could not encode was never published: its topic names
where it would have gone, its partition and offset are -1, and its value is the
row as JSON after sensitive columns were masked (it could not be Avro).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from queuestream.errors import RecordError
from queuestream.kafka_clients import admin_client, create_topics
from queuestream.settings import Settings

__all__ = [
    "CONNECT_HEADER",
    "HEADER",
    "ErrorBudget",
    "ErrorContext",
    "dlq_topic",
    "ensure_dlq_topics",
    "error_headers",
]

HEADER = "queuestream.errors."
CONNECT_HEADER = "__connect.errors."

#: queuestream's stages, and Kafka Connect's names for them.
_CONNECT_STAGES = {"produce": "VALUE_CONVERTER", "decode": "VALUE_CONVERTER", "apply": "TASK_PUT"}


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def ensure_dlq_topics(settings: Settings, topics: set[str]) -> None:
    """Create the dead-letter topics of ``topics`` where missing: one partition, kept forever."""
    create_topics(
        admin_client(settings),
        [
            NewTopic(
                dlq_topic(t),
                num_partitions=1,
                replication_factor=settings.replication_factor,
                config={"retention.ms": "-1"},
            )
            for t in sorted(topics)
        ],
        settings.kafka_bootstrap_servers,
    )


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """Where a dead letter comes from: the record's place and who refused it."""

    topic: str
    partition: int  # -1: never published
    offset: int  # -1: never published
    timestamp_ms: int
    stage: str  # produce, decode or apply
    by: Mapping[str, str]  # target and group, or producer and refresh_id
    connector: str  # Connect's connector.name: the consumer group or the producer's id


def error_headers(error: RecordError, where: ErrorContext) -> list[tuple[str, str | bytes | None]]:
    """The headers of a dead letter: queuestream's and Kafka Connect's."""
    ours: dict[str, Any] = {
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
        "timestamp": where.timestamp_ms,
        "class": type(error).__name__,
        "message": str(error),
        "reason": error.reason,
        "table": error.table,
        "stage": where.stage,
        **where.by,
    }
    if error.key is not None:
        ours["key"] = json.dumps(error.key, default=str, sort_keys=True)
    if error.column is not None:
        ours["column"] = error.column
    connect: dict[str, Any] = {
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
        "connector.name": where.connector,
        "task.id": 0,
        "stage": _CONNECT_STAGES.get(where.stage, where.stage),
        "class.name": f"queuestream.{where.stage}",
        "exception.class.name": f"{type(error).__module__}.{type(error).__name__}",
        "exception.message": str(error),
    }
    headers: list[tuple[str, str | bytes | None]] = [
        (HEADER + k, str(v).encode()) for k, v in ours.items()
    ]
    headers += [(CONNECT_HEADER + k, str(v).encode()) for k, v in connect.items()]
    return headers


class ErrorBudget:
    """Counts records sent to dead-letter topics over the life of a process."""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.spent = 0

    def fits(self, count: int) -> bool:
        """Whether ``count`` more dead letters fit in what is left of the budget."""
        return self.spent + count <= self.max_errors

    def spend(self, count: int) -> None:
        """Count ``count`` dead letters once what carries them committed."""
        self.spent += count
