"""The producers' status topic: running, or stuck on a row that stops the feed.

A row that cannot be encoded stops ``produce`` from committing once the error
budget (``--max-errors``) is spent or when there is none: the producer does not
exit (a supervisor restarting it would loop), it retries with backoff until the
row is fixed in the source. Its metrics say so, and so does the monitor, which
runs elsewhere and knows only Kafka. So a producer writes its state to a
compacted status topic, one record per producer (keyed by its transactional
id), in the manner of Kafka Connect's ``connect-status`` topic: ``running`` when
it starts and when it gets going again, ``stuck`` with the table, key, column
and reason of the row while a row stops it. The monitor reads the latest record
of each producer.

The topic is ``__queuestream-status.<prefix>``: the leading double underscore
marks it as internal (like ``__consumer_offsets``), so a sink reading
``<prefix>\\..*`` does not take it. Values are JSON (operators read them with any
Kafka tool); the record holds the key of the row and the reason, which may quote the
offending value as encoding saw it: after sensitive columns were masked.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from queuestream.errors import RecordError
from queuestream.kafka_clients import consumer_config
from queuestream.settings import Settings

__all__ = ["ProducerStatus", "read_statuses", "status_topic"]

log = logging.getLogger(__name__)

_READ_SECONDS = 10.0


def status_topic(prefix: str) -> str:
    return f"__queuestream-status.{prefix}"


@dataclass(frozen=True, slots=True)
class ProducerStatus:
    """What one producer last said about itself."""

    producer: str  # transactional id
    state: str  # running or stuck
    since: datetime
    reason: str | None = None
    table: str | None = None
    key: str | None = None  # JSON
    column: str | None = None
    sweep: dict[str, Any] | None = None  # the last sweep pass: when, and what it found

    @classmethod
    def running(cls, producer: str, sweep: dict[str, Any] | None = None) -> ProducerStatus:
        return cls(producer, "running", datetime.now(UTC), sweep=sweep)

    @classmethod
    def stuck(
        cls, producer: str, error: RecordError, sweep: dict[str, Any] | None = None
    ) -> ProducerStatus:
        key = None if error.key is None else json.dumps(error.key, default=str, sort_keys=True)
        return cls(
            producer,
            "stuck",
            datetime.now(UTC),
            reason=error.reason,
            table=error.table,
            key=key,
            column=error.column,
            sweep=sweep,
        )

    @property
    def row(self) -> str:
        """The row that stops the feed and why ("" unless stuck)."""
        if self.state != "stuck":
            return ""
        return f"table {self.table}, key {self.key}, column {self.column}: {self.reason}"

    @property
    def last_sweep(self) -> str:
        """The last sweep pass in a line: when it finished and what it found ("" if none)."""
        sweep = self.sweep
        if not sweep or not sweep.get("finished"):
            return ""
        findings = sweep.get("findings") or {}
        checked = sum(f.get("checked", 0) for f in findings.values())
        found = "; ".join(
            f"{table} " + ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "checked")
            for table, counts in findings.items()
            if any(n for k, n in counts.items() if k != "checked")
        )
        return f"finished {sweep['finished']}, {checked} rows checked: {found or 'nothing found'}"

    def describe(self) -> str:
        since = self.since.isoformat()
        if self.state != "stuck":
            return f"producer {self.producer}: {self.state} since {since}"
        return f"producer {self.producer}: stuck since {since} on {self.row}"

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["since"] = self.since.isoformat()
        return found

    def encode(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ProducerStatus:
        found = json.loads(data)
        found["since"] = datetime.fromisoformat(found["since"])
        return cls(**found)


def read_statuses(settings: Settings) -> tuple[ProducerStatus, ...]:
    """The latest status of each producer of the prefix; none when the topic does not exist."""
    topic = status_topic(settings.topic_prefix)
    consumer = Consumer(
        consumer_config(
            settings,
            f"queuestream-status-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True},
        )
    )
    try:
        partition = TopicPartition(topic, 0)
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=_READ_SECONDS)
        except KafkaException:
            return ()  # no status topic yet (no producer of this version ran)
        if high <= low:
            return ()
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        latest: dict[str, ProducerStatus] = {}
        deadline = time.monotonic() + _READ_SECONDS
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                log.warning("reading %s: %s", topic, error.str())
                continue
            key = (message.key() or b"").decode(errors="replace")
            value = message.value()
            if value is None:
                latest.pop(key, None)
                continue
            try:
                latest[key] = ProducerStatus.decode(value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("skipping an unreadable status of %s: %s", key, exc)
        return tuple(latest[k] for k in sorted(latest))
    finally:
        consumer.close()
