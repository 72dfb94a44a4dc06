"""Lag limits and the groups over them: ``queuestream monitor --check``.

``--max-lag`` (messages) and ``--max-lag-seconds`` are checked per partition of
every consumer group in a snapshot; each breach names the group, the topic, the
partition and the figure over its limit. A group asked for by name that has no
committed offsets on the prefix's topics is a breach too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from queuestream.monitor.snapshot import PartitionLag, Snapshot

__all__ = ["Breach", "LagLimits", "breaches"]


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
