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

import time
from collections.abc import Callable, Iterable, Mapping
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

from queuestream.errors import BrokerUnavailableError, ConfigurationError, QueuestreamError
from queuestream.failures import broker_failure
from queuestream.retry import Backoff, Outage

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

#: A partition without a leader yet (a new topic), or with one moving, is asked again:
#: first after 0.1 s, then doubling up to 2 s.
_LEADER_BACKOFF = Backoff(0.1, 2.0)

#: What a partition answers while its leader is elected or moves (librdkafka does not
#: mark these retriable on an admin result, so they are named).
_LEADER_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,  # NOT_LEADER_OR_FOLLOWER
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,  # a topic just made, not known to every broker yet
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,  # "leader election in progress"
        KafkaError.REPLICA_NOT_AVAILABLE,
    }
)


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


def _transient(future: Future[Any]) -> KafkaError | None:
    """The error ``future`` failed with when it is one of a partition whose leader is not
    settled (:data:`_LEADER_SETTLING`), else None."""
    try:
        error = future.exception(timeout=ADMIN_TIMEOUT + 5)
    except TimeoutError:
        return None  # _result says so
    if isinstance(error, KafkaException) and isinstance(error.args[0], KafkaError):
        kafka_error: KafkaError = error.args[0]
        return kafka_error if kafka_error.code() in _LEADER_SETTLING else None
    return None


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
    *,
    within: float = ADMIN_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[Partition, Any]:
    """ListOffsets of every partition at once: ``ListOffsetsResultInfo`` (offset, timestamp).

    A partition whose leader is not settled (right after a topic is made, or while a
    leader moves, it answers NOT_LEADER_OR_FOLLOWER and the like) is asked
    again, with the project's backoff, for up to ``within`` seconds; then, or for any
    other error, the error is raised as :func:`broker_failure` classifies it.
    """
    if not specs:
        return {}
    found: dict[Partition, Any] = {}
    wanted = dict(specs)
    outage = Outage(f"reading the {what} of {len(wanted)} partitions", _LEADER_BACKOFF)
    give_up = clock() + within
    while True:
        request = {TopicPartition(t, p): spec for (t, p), spec in wanted.items()}
        futures = admin.list_offsets(
            request, isolation_level=isolation, request_timeout=ADMIN_TIMEOUT
        )
        again: dict[Partition, QueuestreamError] = {}
        for tp, future in futures.items():
            partition, doing = (tp.topic, tp.partition), f"the {what} of {tp.topic}[{tp.partition}]"
            error = _transient(future)
            if error is not None and clock() < give_up:
                again[partition] = broker_failure(error, None, f"read {doing}")
            else:
                found[partition] = _result(future, doing)
        if not again:
            if outage.ongoing:
                outage.succeeded()
            return found
        sleep(outage.failed(again[min(again)]))
        wanted = {p: wanted[p] for p in again}


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
