"""One snapshot of queuestream as Kafka holds it, in plain dataclasses.

A snapshot has, for one topic prefix: every queuestream topic (partitions, end
offsets, messages in the last minute, oldest retained offset and its time),
every consumer group with offsets on those topics (state, members, lag per
partition in messages and in seconds), the last committed batch (END marker:
refresh id, time, counts per table, the producer's watermark) and the depths of
the dead-letter topics. ``as_dict()`` gives the JSON shape.

This module is the one place lag is computed (``partition_lag``). Events are
produced in Kafka transactions, so every partition a refresh wrote ends with a
commit marker: a caught-up group's committed offset sits one (or more) below
the log end. Lag is therefore not ``end - committed``: a read_committed reader
starts at the committed offset and counts the messages a member would still be
given (:class:`~queuestream.kafka_reading.MessageCounter`). None before the
end: the group is caught up (0 messages, 0 s). Otherwise the lag in seconds is
the age of the first unconsumed message, which keeps growing while a group is
stopped. Very large lags are estimated past a limit and marked as not exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    IsolationLevel,
    KafkaException,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from queuestream.batches import read_last_end
from queuestream.errors import BrokerUnavailableError
from queuestream.kafka_clients import admin_client, batches_topic, change_topics
from queuestream.kafka_offsets import describe_groups, group_offsets, list_groups, list_offsets
from queuestream.kafka_reading import MessageCounter, Unconsumed
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = [
    "RATE_WINDOW_SECONDS",
    "Breach",
    "DeadLetterInfo",
    "GroupInfo",
    "LagLimits",
    "LastBatch",
    "PartitionInfo",
    "PartitionLag",
    "Snapshot",
    "SnapshotCollector",
    "TopicInfo",
    "breaches",
    "messages_since",
    "partition_lag",
]

log = logging.getLogger(__name__)

#: Message rates are the messages of this last stretch of time, from offsets-for-times.
RATE_WINDOW_SECONDS = 60
_ADMIN_TIMEOUT = 15.0
_DLQ_SUFFIX = ".dlq"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None or ms < 0 else datetime.fromtimestamp(ms / 1000, UTC)


# --- the figures -------------------------------------------------------------------


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
        }


# --- lag and rates: plain logic --------------------------------------------------


def messages_since(end: int, offset_at_time: int) -> int:
    """Messages from the first one at or after a time to the log end; -1: none since."""
    return max(0, end - offset_at_time) if offset_at_time >= 0 else 0


def partition_lag(
    topic: str,
    partition: int,
    committed: int | None,
    end: int,
    unconsumed: Unconsumed | None,
    now_ms: int,
) -> PartitionLag:
    """A group's lag on one partition from what a read_committed reader found.

    ``unconsumed`` is None, or has no message, when nothing committed lies between
    the group's position and the log end (transaction markers and aborted messages
    are not delivered): the group is caught up. Otherwise the lag in seconds is the
    age of the first unconsumed message at ``now_ms``, so it grows while the group
    stands still.
    """
    if unconsumed is None or unconsumed.count <= 0:
        return PartitionLag(topic, partition, committed, end, 0, 0.0)
    seconds = (
        None if unconsumed.first_ms is None else max(0.0, (now_ms - unconsumed.first_ms) / 1000)
    )
    return PartitionLag(
        topic,
        partition,
        committed,
        end,
        unconsumed.count,
        seconds,
        unconsumed.exact,
        unconsumed.first_offset,
    )


# --- alerting ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LagLimits:
    """``--max-lag`` (messages) and ``--max-lag-seconds``; None: no limit."""

    max_messages: int | None = None
    max_seconds: float | None = None

    @property
    def empty(self) -> bool:
        return self.max_messages is None and self.max_seconds is None

    def exceeded(self, lag: PartitionLag) -> bool:
        return bool(self.reasons(lag))

    def reasons(self, lag: PartitionLag) -> list[str]:
        found = []
        if self.max_messages is not None and lag.lag_messages > self.max_messages:
            found.append(f"{lag.lag_messages} messages > {self.max_messages}")
        if self.max_seconds is not None and lag.lag_messages > 0:
            if lag.lag_seconds is None:
                found.append("age unknown (its first unconsumed message was not reached)")
            elif lag.lag_seconds > self.max_seconds:
                found.append(f"{lag.lag_seconds:.1f} s > {self.max_seconds:g} s")
        return found


@dataclass(frozen=True, slots=True)
class Breach:
    """A group over a lag limit on one partition, or a group asked for that has no offsets."""

    group: str
    topic: str | None = None
    partition: int | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.topic is None:
            return f"group {self.group}: {self.reason}"
        return f"group {self.group}: {self.topic}[{self.partition}] lag {self.reason}"


def breaches(snapshot: Snapshot, limits: LagLimits, groups: Sequence[str] = ()) -> list[Breach]:
    """Every partition of every group (of ``groups`` when given) over ``limits``."""
    found: list[Breach] = []
    for name in groups:
        if snapshot.group(name) is None:
            reason = f"no committed offsets on the topics of prefix {snapshot.prefix!r}"
            found.append(Breach(name, reason=reason))
    for group in snapshot.groups:
        if groups and group.name not in groups:
            continue
        for lag in group.partitions:
            reasons = limits.reasons(lag)
            if reasons:
                found.append(Breach(group.name, lag.topic, lag.partition, ", ".join(reasons)))
    return found


# --- collecting from Kafka -------------------------------------------------------------


class SnapshotCollector:
    """Collects snapshots for one prefix; keeps its Kafka clients between snapshots.

    ``groups``, when given, narrows the consumer groups to those names.
    """

    def __init__(
        self, settings: Settings, codec: AvroCodec | None = None, groups: Iterable[str] = ()
    ) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec.from_url(
            settings.topic_prefix, settings.schema_registry_url
        )
        self.groups = tuple(groups)
        self._admin: AdminClient = admin_client(settings)
        self._counter = MessageCounter(settings, "queuestream-monitor")

    def close(self) -> None:
        self._counter.close()

    # -- one snapshot --

    def collect(self) -> Snapshot:
        settings = self.settings
        taken_at = datetime.now(UTC)
        now_ms = int(taken_at.timestamp() * 1000)
        partition_counts = self._topic_partitions()
        changes = [t for t in change_topics(settings) if t in partition_counts]
        batches = batches_topic(settings)
        ours = [*changes, *([batches] if batches in partition_counts else [])]
        dlqs = [
            t
            for t in sorted(partition_counts)
            if t.endswith(_DLQ_SUFFIX) and t.removesuffix(_DLQ_SUFFIX) in ours
        ]
        roles = {t: "changes" for t in changes} | {batches: "batches"}
        roles |= {t: "dead letters" for t in dlqs}
        offsets = self._offsets(
            {t: partition_counts[t] for t in [*ours, *dlqs]},
            now_ms,
        )
        topics = tuple(
            TopicInfo(
                name,
                roles[name],
                tuple(offsets[(name, p)] for p in range(partition_counts[name])),
            )
            for name in [*ours, *dlqs]
        )
        by_name = {t.name: t for t in topics}
        groups = self._groups(ours, by_name, now_ms)
        dead_letters = tuple(
            DeadLetterInfo(
                topic=t.name,
                source_topic=t.name.removesuffix(_DLQ_SUFFIX),
                depth=t.retained,
            )
            for t in topics
            if t.role == "dead letters"
        )
        last_batch = None
        if batches in by_name and by_name[batches].retained:
            last_batch = self._last_batch(taken_at)
        return Snapshot(
            taken_at=taken_at,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            prefix=settings.topic_prefix,
            topics=topics,
            groups=groups,
            last_batch=last_batch,
            dead_letters=dead_letters,
        )

    def _topic_partitions(self) -> dict[str, int]:
        try:
            metadata = self._admin.list_topics(timeout=_ADMIN_TIMEOUT)
        except KafkaException as exc:
            msg = (
                f"Kafka at {self.settings.kafka_bootstrap_servers} is unreachable "
                f"({exc.args[0]}); start it (make kafka-up) or set KAFKA_BOOTSTRAP_SERVERS"
            )
            raise BrokerUnavailableError(msg) from None
        return {
            name: len(t.partitions)
            for name, t in metadata.topics.items()
            if not t.error and t.partitions
        }

    def _offsets(self, topics: dict[str, int], now_ms: int) -> dict[tuple[str, int], PartitionInfo]:
        partitions = [(t, p) for t, n in topics.items() for p in range(n)]
        plain = IsolationLevel.READ_UNCOMMITTED
        earliest_spec, latest_spec = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]

        def look_up(spec: Any, what: str, isolation: IsolationLevel = plain) -> dict[Any, Any]:
            return list_offsets(self._admin, dict.fromkeys(partitions, spec), what, isolation)

        earliest = look_up(earliest_spec, "oldest offset")
        end = look_up(latest_spec, "log end")
        stable = look_up(latest_spec, "last stable offset", IsolationLevel.READ_COMMITTED)
        oldest = look_up(OffsetSpec.for_timestamp(0), "oldest message")
        recent = look_up(
            OffsetSpec.for_timestamp(now_ms - RATE_WINDOW_SECONDS * 1000), "offset a minute ago"
        )
        found = {}
        for key in partitions:
            first = oldest[key]
            found[key] = PartitionInfo(
                partition=key[1],
                earliest=earliest[key].offset,
                end=end[key].offset,
                stable_end=stable[key].offset,
                oldest_time=_from_ms(first.timestamp) if first.offset >= 0 else None,
                last_minute=messages_since(end[key].offset, recent[key].offset),
            )
        return found

    def _group_names(self) -> list[str]:
        names = list_groups(self._admin)
        if self.groups:
            names = [n for n in names if n in self.groups]
        return names

    def _committed(
        self, names: list[str], topics: set[str]
    ) -> dict[str, dict[tuple[str, int], int]]:
        """Offsets each group committed on ``topics``; groups with none are left out."""
        found: dict[str, dict[tuple[str, int], int]] = {}
        for name, offsets in group_offsets(self._admin, names).items():
            ours = {tp: o for tp, o in offsets.items() if tp[0] in topics}
            if ours:
                found[name] = ours
        return found

    def _describe(self, names: list[str]) -> dict[str, tuple[str, int]]:
        return {
            name: (group.state, len(group.members))
            for name, group in describe_groups(self._admin, names).items()
        }

    def _groups(
        self, topics: list[str], by_name: dict[str, TopicInfo], now_ms: int
    ) -> tuple[GroupInfo, ...]:
        committed = self._committed(self._group_names(), set(topics))
        if not committed:
            return ()
        described = self._describe(sorted(committed))
        starts: dict[tuple[str, int, str], int] = {}  # (topic, partition, group) -> start
        for name, offsets in committed.items():
            for topic in topics:
                if not any(t == topic for t, _ in offsets):
                    continue
                for info in by_name[topic].partitions:
                    position = offsets.get((topic, info.partition), info.earliest)
                    starts[(topic, info.partition, name)] = max(position, info.earliest)
        wanted = {
            (topic, p, start): by_name[topic].partitions[p].stable_end
            for (topic, p, _), start in starts.items()
        }
        unconsumed = self._counter.count(wanted)
        groups = []
        for name in sorted(committed):
            lags = tuple(
                partition_lag(
                    topic,
                    p,
                    committed[name].get((topic, p)),
                    by_name[topic].partitions[p].end,
                    unconsumed.get((topic, p, start)),
                    now_ms,
                )
                for (topic, p, group), start in starts.items()
                if group == name
            )
            state, members = described.get(name, ("unknown", 0))
            groups.append(GroupInfo(name, state, members, lags))
        return tuple(groups)

    def _last_batch(self, taken_at: datetime) -> LastBatch | None:
        end = read_last_end(self.settings, self.codec, self.settings.transactional_id).marker
        if end is None:
            return None
        watermark = end.window_end
        return LastBatch(
            refresh_id=end.refresh_id,
            producer=end.producer,
            mode=end.mode or "",
            committed_at=_from_ms(end.timestamp_ms) or taken_at,
            event_count=end.event_count,
            counts=dict(end.counts),
            window_start=end.window_start,
            watermark=watermark,
            watermark_age_seconds=None
            if watermark is None
            else max(0.0, (taken_at - watermark).total_seconds()),
            offset=end.offset,
        )
