"""Offsets as Kafka holds them: log bounds, offsets-for-times, consumer groups.

Replay and rebuild (``consumers/replay.py``, ``consumers/rebuild.py``) turn
"earliest", "a time" or "the end" into offsets per partition, and the monitor
(``queuestream/monitor/``) reads the same figures to show topics and lag; this is
the one place that asks Kafka for them. Each look-up is one AdminClient round for
all partitions (or groups) at once. Errors are classified by
:func:`queuestream.failures.broker_failure` with what could not be read: a refusal
(ACLs, credentials) stops the command, anything else is retriable.

"The end" is read_committed unless asked otherwise: the last stable offset,
so nothing of a transaction still open counts as there. Times are message
timestamps (the producer's CreateTime): the offset "at" T is that of the first
message stamped T or later, as with Kafka's offsets-for-times and
``kafka-consumer-groups --reset-offsets --to-datetime``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from queuestream.errors import BrokerUnavailableError, ConfigurationError
from queuestream.failures import broker_failure

__all__ = [
    "ADMIN_TIMEOUT",
    "GroupState",
    "LogBounds",
    "Partition",
    "describe_groups",
    "from_ms",
    "group_offsets",
    "list_groups",
    "list_offsets",
    "log_bounds",
    "offsets_at",
    "partitions_of",
    "to_ms",
]

Partition = tuple[str, int]  # (topic, partition)

ADMIN_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class LogBounds:
    """The oldest retained offset and the log end (last stable offset) of a partition."""

    low: int
    high: int

    def clamp(self, offset: int) -> int:
        return min(max(offset, self.low), self.high)


@dataclass(frozen=True, slots=True)
class GroupState:
    """A consumer group's state (Kafka's, lower case: stable, empty, dead, ...) and members."""

    state: str
    members: list[str]  # client-id@host of each active member


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (Kafka timestamps)."""
    if moment.tzinfo is None:
        msg = f"{moment.isoformat()} has no time zone; give one (e.g. 2026-11-29T10:00:00+00:00)"
        raise ConfigurationError(msg)
    return int(moment.timestamp() * 1000)


def from_ms(ms: int | None) -> datetime | None:
    """The aware datetime of a Kafka timestamp in ms; None when there is none (or it is < 0)."""
    return None if ms is None or ms < 0 else datetime.fromtimestamp(ms / 1000, UTC)


def _result(future: Future[Any], what: str) -> Any:
    try:
        return future.result(timeout=ADMIN_TIMEOUT + 5)
    except KafkaException as exc:
        raise broker_failure(exc.args[0], None, f"read {what}") from None
    except TimeoutError:
        msg = f"Kafka did not answer in time while reading {what}"
        raise BrokerUnavailableError(msg) from None


def partitions_of(admin: AdminClient, topics: Iterable[str]) -> list[Partition]:
    """Every partition of ``topics``; a topic that does not exist is an error naming it."""
    wanted = list(dict.fromkeys(topics))
    try:
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT)
    except KafkaException as exc:
        raise broker_failure(exc.args[0], None, "list topics") from None
    found: list[Partition] = []
    missing = []
    for topic in wanted:
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            missing.append(topic)
            continue
        found.extend((topic, p) for p in sorted(described.partitions))
    if missing:
        msg = f"no such topic: {', '.join(missing)} (check --topics and the topic prefix)"
        raise ConfigurationError(msg)
    return found


def list_offsets(
    admin: AdminClient,
    specs: Mapping[Partition, OffsetSpec],
    what: str,
    isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
) -> dict[Partition, Any]:
    """One ListOffsets round: ``ListOffsetsResultInfo`` (offset, timestamp) per partition."""
    if not specs:
        return {}
    request = {TopicPartition(t, p): spec for (t, p), spec in specs.items()}
    futures = admin.list_offsets(request, isolation_level=isolation, request_timeout=ADMIN_TIMEOUT)
    return {
        (tp.topic, tp.partition): _result(future, f"the {what} of {tp.topic}[{tp.partition}]")
        for tp, future in futures.items()
    }


def log_bounds(admin: AdminClient, partitions: Iterable[Partition]) -> dict[Partition, LogBounds]:
    """Oldest retained offset and log end (last stable offset) of each partition."""
    wanted = list(partitions)
    earliest, latest = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]
    low = list_offsets(admin, dict.fromkeys(wanted, earliest), "oldest offset")
    high = list_offsets(admin, dict.fromkeys(wanted, latest), "log end")
    return {p: LogBounds(low[p].offset, high[p].offset) for p in wanted}


def offsets_at(
    admin: AdminClient,
    moment_ms: int,
    bounds: Mapping[Partition, LogBounds],
) -> dict[Partition, int]:
    """The first offset stamped ``moment_ms`` or later per partition (the log end if none)."""
    spec = OffsetSpec.for_timestamp(moment_ms)
    found = list_offsets(admin, dict.fromkeys(bounds, spec), "offset for a time")
    return {
        p: bounds[p].high if found[p].offset < 0 else bounds[p].clamp(found[p].offset)
        for p in bounds
    }


def list_groups(admin: AdminClient) -> list[str]:
    """The names of every consumer group the cluster knows, sorted."""
    listed = _result(admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT), "consumer groups")
    return sorted({g.group_id for g in listed.valid})


def describe_groups(admin: AdminClient, groups: Iterable[str]) -> dict[str, GroupState]:
    """State and active members of each group (a group that does not exist is ``dead``)."""
    names = list(dict.fromkeys(groups))
    if not names:
        return {}
    found = {}
    for name, future in admin.describe_consumer_groups(
        names, request_timeout=ADMIN_TIMEOUT
    ).items():
        description = _result(future, f"consumer group {name}")
        state = getattr(description.state, "name", str(description.state)).lower()
        members = [f"{m.client_id}@{m.host}" for m in description.members or []]
        found[name] = GroupState(state, members)
    return found


def group_offsets(admin: AdminClient, groups: Iterable[str]) -> dict[str, dict[Partition, int]]:
    """The offsets each group committed (partitions never committed are absent).

    A group that went away since it was listed, or that this client may not see, has
    no offsets.
    """
    futures = {
        name: future
        for name in dict.fromkeys(groups)
        for future in admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(name)], request_timeout=ADMIN_TIMEOUT
        ).values()
    }
    found: dict[str, dict[Partition, int]] = {}
    for name, future in futures.items():
        try:
            result = future.result(timeout=ADMIN_TIMEOUT + 5)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() in (
                KafkaError.GROUP_ID_NOT_FOUND,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                found[name] = {}
                continue
            doing = f"read the offsets of consumer group {name}"
            raise broker_failure(error, None, doing) from None
        found[name] = {
            (tp.topic, tp.partition): tp.offset
            for tp in result.topic_partitions or []
            if tp.offset >= 0 and tp.error is None
        }
    return found
