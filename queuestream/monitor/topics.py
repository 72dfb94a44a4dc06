"""The figures of a prefix's topics: partitions, offsets, the oldest message, the rate.

The monitor shows the change topics, the batches topic and the dead-letter
topics (``<topic>.dlq``) of one prefix. Their offsets come in one ListOffsets
round per figure for every partition at once (``queuestream.kafka_offsets``):
the oldest retained offset, the log end (transaction markers included), the
last stable offset (what read_committed readers reach), the oldest message's
time and the offset a minute ago, which gives the rate.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import IsolationLevel
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from queuestream.kafka_clients import batches_topic, change_topics, topic_partition_counts
from queuestream.kafka_offsets import from_ms, list_offsets
from queuestream.monitor.snapshot import (
    RATE_WINDOW_SECONDS,
    DeadLetterInfo,
    PartitionInfo,
    TopicInfo,
)
from queuestream.settings import Settings

__all__ = ["collect_topics", "dead_letters", "messages_since"]

_DLQ_SUFFIX = ".dlq"


def messages_since(end: int, offset_at_time: int) -> int:
    """Messages from the first one at or after a time to the log end; -1: none since."""
    return max(0, end - offset_at_time) if offset_at_time >= 0 else 0


def collect_topics(admin: AdminClient, settings: Settings, now_ms: int) -> tuple[TopicInfo, ...]:
    """The prefix's change and batches topics that exist, then their dead-letter topics."""
    partition_counts = _topic_partitions(admin, settings)
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
    offsets = _partition_figures(admin, {t: partition_counts[t] for t in [*ours, *dlqs]}, now_ms)
    return tuple(
        TopicInfo(
            name,
            roles[name],
            tuple(offsets[(name, p)] for p in range(partition_counts[name])),
        )
        for name in [*ours, *dlqs]
    )


def dead_letters(topics: tuple[TopicInfo, ...]) -> tuple[DeadLetterInfo, ...]:
    """The dead-letter topics among ``topics``, with their depths."""
    return tuple(
        DeadLetterInfo(
            topic=t.name,
            source_topic=t.name.removesuffix(_DLQ_SUFFIX),
            depth=t.retained,
        )
        for t in topics
        if t.role == "dead letters"
    )


def _topic_partitions(admin: AdminClient, settings: Settings) -> dict[str, int]:
    counts = topic_partition_counts(admin, settings, doing="list the topics")
    return {name: n for name, n in counts.items() if n}


def _partition_figures(
    admin: AdminClient, topics: dict[str, int], now_ms: int
) -> dict[tuple[str, int], PartitionInfo]:
    partitions = [(t, p) for t, n in topics.items() for p in range(n)]
    plain = IsolationLevel.READ_UNCOMMITTED
    earliest_spec, latest_spec = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]

    def look_up(spec: Any, what: str, isolation: IsolationLevel = plain) -> dict[Any, Any]:
        return list_offsets(admin, dict.fromkeys(partitions, spec), what, isolation)

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
            oldest_time=from_ms(first.timestamp) if first.offset >= 0 else None,
            last_minute=messages_since(end[key].offset, recent[key].offset),
        )
    return found
