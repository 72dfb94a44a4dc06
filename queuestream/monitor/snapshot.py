"""One snapshot of queuestream as Kafka holds it, in plain dataclasses, and its JSON.

A snapshot has, for one topic prefix: every queuestream topic (partitions, end
offsets, messages in the last minute, oldest retained offset and its time),
every consumer group with offsets on those topics (state, members, lag per
partition in messages and in seconds), the last committed batch (END marker:
refresh id, time, counts per table, the producer's watermark) and the depths of
the dead-letter topics. ``as_dict()`` gives the JSON shape.

Nothing here talks to Kafka: ``collector`` fills these in (with ``topics`` and
``lag``), the views (``terminal``, ``web``) and ``alerts`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from queuestream.batches import EndMarker
from queuestream.kafka_offsets import from_ms
from queuestream.producer_status import ProducerStatus

__all__ = [
    "RATE_WINDOW_SECONDS",
    "DeadLetterInfo",
    "GroupInfo",
    "LastBatch",
    "PartitionInfo",
    "PartitionLag",
    "Snapshot",
    "TopicInfo",
]

#: Message rates are the messages of this last stretch of time, from offsets-for-times.
RATE_WINDOW_SECONDS = 60


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """Offsets of one topic partition."""

    partition: int
    earliest: int  # oldest retained offset
    end: int  # log end (high watermark), transaction markers included
    stable_end: int  # last stable offset: what read_committed readers can reach
    oldest_time: datetime | None  # timestamp of the oldest retained message
    last_minute: int  # messages written in the last RATE_WINDOW_SECONDS

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "earliest": self.earliest,
            "end": self.end,
            "stable_end": self.stable_end,
            "oldest_time": _iso(self.oldest_time),
            "last_minute": self.last_minute,
        }


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One queuestream topic: ``role`` is ``changes``, ``batches`` or ``dead letters``."""

    name: str
    role: str
    partitions: tuple[PartitionInfo, ...]

    @property
    def end_offsets(self) -> dict[int, int]:
        return {p.partition: p.end for p in self.partitions}

    @property
    def retained(self) -> int:
        """Offsets retained, transaction markers included (an upper bound of the messages)."""
        return sum(p.end - p.earliest for p in self.partitions)

    @property
    def rate_per_second(self) -> float:
        return sum(p.last_minute for p in self.partitions) / RATE_WINDOW_SECONDS

    @property
    def oldest_time(self) -> datetime | None:
        times = [p.oldest_time for p in self.partitions if p.oldest_time is not None]
        return min(times) if times else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "partitions": [p.as_dict() for p in self.partitions],
            "retained": self.retained,
            "rate_per_second": round(self.rate_per_second, 3),
            "oldest_time": _iso(self.oldest_time),
        }


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A consumer group's lag on one partition."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (it starts at earliest)
    end: int
    lag_messages: int
    lag_seconds: float | None  # None: not known (the first unconsumed message was not reached)
    exact: bool = True
    first_unconsumed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag_messages": self.lag_messages,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "exact": self.exact,
            "first_unconsumed": self.first_unconsumed,
        }


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group with committed offsets on the prefix's topics."""

    name: str
    state: str  # stable, empty, preparing_rebalancing, ... (Kafka's group state, lower case)
    members: int
    partitions: tuple[PartitionLag, ...]

    @property
    def lag_messages(self) -> int:
        return sum(p.lag_messages for p in self.partitions)

    @property
    def lag_seconds(self) -> float:
        return max((p.lag_seconds or 0.0 for p in self.partitions), default=0.0)

    @property
    def exact(self) -> bool:
        """False when some partition's lag was estimated."""
        return all(p.exact for p in self.partitions)

    @property
    def topics(self) -> list[str]:
        return list(dict.fromkeys(p.topic for p in self.partitions))

    def on(self, topic: str) -> GroupInfo:
        """The group narrowed to one topic's partitions."""
        lags = tuple(p for p in self.partitions if p.topic == topic)
        return GroupInfo(self.name, self.state, self.members, lags)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "members": self.members,
            "lag_messages": self.lag_messages,
            "lag_seconds": round(self.lag_seconds, 3),
            "partitions": [p.as_dict() for p in self.partitions],
        }


@dataclass(frozen=True, slots=True)
class LastBatch:
    """The last committed END marker of the batches topic."""

    refresh_id: str
    producer: str
    mode: str
    committed_at: datetime  # the marker's timestamp: written in the refresh's transaction
    event_count: int
    counts: dict[str, int]
    window_start: datetime | None
    watermark: datetime | None  # window_end: the producer's watermark after this refresh
    watermark_age_seconds: float | None
    offset: int

    @classmethod
    def from_end(cls, end: EndMarker, taken_at: datetime) -> LastBatch:
        """The batch an END marker read back describes, as of ``taken_at``."""
        watermark = end.window_end
        return cls(
            refresh_id=end.refresh_id,
            producer=end.producer,
            mode=end.mode or "",
            committed_at=from_ms(end.timestamp_ms) or taken_at,
            event_count=end.event_count,
            counts=dict(end.counts),
            window_start=end.window_start,
            watermark=watermark,
            watermark_age_seconds=None
            if watermark is None
            else max(0.0, (taken_at - watermark).total_seconds()),
            offset=end.offset,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "refresh_id": self.refresh_id,
            "producer": self.producer,
            "mode": self.mode,
            "committed_at": _iso(self.committed_at),
            "event_count": self.event_count,
            "counts": dict(self.counts),
            "window_start": _iso(self.window_start),
            "watermark": _iso(self.watermark),
            "watermark_age_seconds": None
            if self.watermark_age_seconds is None
            else round(self.watermark_age_seconds, 3),
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """A dead-letter topic (``<topic>.dlq``) and how many messages it holds."""

    topic: str
    source_topic: str
    depth: int  # retained offsets: dead letters are written without transactions

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "source_topic": self.source_topic, "depth": self.depth}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the monitor shows, as of ``taken_at``."""

    taken_at: datetime
    bootstrap_servers: str
    prefix: str
    topics: tuple[TopicInfo, ...] = ()
    groups: tuple[GroupInfo, ...] = ()
    last_batch: LastBatch | None = None
    dead_letters: tuple[DeadLetterInfo, ...] = ()
    producers: tuple[ProducerStatus, ...] = ()  # from the status topic

    @property
    def stuck_producers(self) -> tuple[ProducerStatus, ...]:
        return tuple(p for p in self.producers if p.state == "stuck")

    def group(self, name: str) -> GroupInfo | None:
        return next((g for g in self.groups if g.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": _iso(self.taken_at),
            "bootstrap_servers": self.bootstrap_servers,
            "prefix": self.prefix,
            "topics": [t.as_dict() for t in self.topics],
            "groups": [g.as_dict() for g in self.groups],
            "last_batch": None if self.last_batch is None else self.last_batch.as_dict(),
            "dead_letters": [d.as_dict() for d in self.dead_letters],
            "producers": [p.as_dict() for p in self.producers],
        }
