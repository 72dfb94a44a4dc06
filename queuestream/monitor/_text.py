"""Words and numbers as both views (terminal and web page) show them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from queuestream.monitor.alerts import LagLimits
from queuestream.monitor.snapshot import GroupInfo, PartitionLag, Snapshot, TopicInfo

__all__ = [
    "GroupTopicRow",
    "age",
    "batch_counts",
    "group_topic_rows",
    "lag_seconds",
    "moment",
    "partition_list",
    "partition_offsets",
]


def age(seconds: float | None) -> str:
    """``4.2 s``, ``3m 05s``, ``2h 03m``, ``1d 02h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def moment(value: datetime | None, now: datetime) -> str:
    """A UTC time and how long ago it was."""
    if value is None:
        return "-"
    ago = (now - value).total_seconds()
    return f"{value:%Y-%m-%d %H:%M:%S} UTC ({age(max(0.0, ago))} ago)"


def lag_seconds(lag: PartitionLag) -> str:
    return "?" if lag.lag_seconds is None else age(lag.lag_seconds)


def _messages(lag: PartitionLag) -> str:
    return f"{lag.lag_messages}" if lag.exact else f"~{lag.lag_messages}"


@dataclass(frozen=True, slots=True)
class GroupTopicRow:
    """One row of the groups table: a group's lag on one topic."""

    group: GroupInfo
    first: bool  # the group's first row (shows its name, state and members)
    topic: str
    lag: GroupInfo  # the group narrowed to this topic
    over_limit: bool

    def per_partition(self) -> list[str]:
        """``0: 0``, ``1: 5 (12.3 s)`` for each partition."""
        return [
            f"{p.partition}: {_messages(p)}" + (f" ({lag_seconds(p)})" if p.lag_messages else "")
            for p in self.lag.partitions
        ]

    def total(self) -> str:
        """The topic's lag in messages, ``~`` in front when estimated."""
        return f"{'' if self.lag.exact else '~'}{self.lag.lag_messages}"


def group_topic_rows(snapshot: Snapshot, limits: LagLimits) -> list[GroupTopicRow]:
    rows = []
    for group in snapshot.groups:
        for index, topic in enumerate(group.topics):
            lag = group.on(topic)
            over = any(limits.exceeded(p) for p in lag.partitions)
            rows.append(GroupTopicRow(group, index == 0, topic, lag, over))
    return rows


def partition_offsets(topic: TopicInfo, attribute: str) -> str:
    """``0: 12  1: 40`` of one offset of each partition."""
    return ", ".join(f"{p.partition}: {getattr(p, attribute)}" for p in topic.partitions)


def partition_list(values: list[str]) -> str:
    return "  ".join(values)


def batch_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{table} {count}" for table, count in counts.items()) or "no events"
