"""Plan a replay: where each partition of a consumer group would move; changes nothing.

:func:`plan_replay` turns a :class:`~consumers.replay_inputs.ReplaySpec` into a
:class:`ReplayPlan`: per topic and partition the group's committed offset, the
offset the sample target holds (when a target is named), the new offset and the
retained log around it. New offsets are clamped into the retained log (oldest
retained offset .. log end); times resolve with offsets-for-times
(:mod:`queuestream.kafka_offsets`): the first message stamped at or after the
time, as ``kafka-consumer-groups --to-datetime`` does. A forward move skips
events, and the plan counts them by reading (offsets are not events:
transaction markers take offsets too). Carrying the plan out is
:func:`consumers.replay.execute_replay`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient

from consumers import TARGET_NAMES, offsets
from consumers.replay_inputs import ReplaySpec
from queuestream.databases import create_engine, describe_url, retriable_outages
from queuestream.errors import ConfigurationError
from queuestream.kafka_clients import admin_client, topic_partition_counts
from queuestream.kafka_offsets import (
    LogBounds,
    Partition,
    describe_groups,
    group_offsets,
    log_bounds,
    offsets_at,
    partitions_of,
    to_ms,
)
from queuestream.kafka_reading import MessageCounter
from queuestream.settings import Settings
from queuestream.tables import TABLES, topic_for

__all__ = ["OffsetMove", "ReplayPlan", "plan_replay"]


@dataclass(frozen=True, slots=True)
class OffsetMove:
    topic: str
    partition: int
    group_offset: int | None  # committed to the Kafka group (None: never committed)
    target_offset: int | None  # stored in the sample target (None: no target or no row)
    new_offset: int
    low: int
    high: int

    @property
    def current(self) -> int | None:
        return self.target_offset if self.target_offset is not None else self.group_offset

    @property
    def delta(self) -> int | None:
        return None if self.current is None else self.new_offset - self.current


@dataclass
class ReplayPlan:
    group: str
    destination: str
    state: str
    members: list[str]
    moves: list[OffsetMove]
    target_url: str | None = None
    target_names: list[str] = field(default_factory=list)
    #: Events that forward moves jump over: the group would never be given them.
    skipped: dict[Partition, int] = field(default_factory=dict)
    executed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "destination": self.destination,
            "state": self.state,
            "members": self.members,
            "target": describe_url(self.target_url) if self.target_url else None,
            "target_names": self.target_names,
            "executed": self.executed,
            "skipped_events": sum(self.skipped.values()),
            "partitions": [asdict(m) | {"delta": m.delta} for m in self.moves],
        }


def _target_offsets(
    settings: Settings, url: str, group: str
) -> tuple[list[str], dict[Partition, int]]:
    """The sample targets in ``url`` that ``group`` applies, and their stored offsets."""
    engine = create_engine(url, existing="the target")
    try:
        with retriable_outages(engine), engine.connect() as conn:
            if not sa.inspect(conn).has_table(offsets.OFFSETS.name):
                msg = (
                    f"{describe_url(url)} has no {offsets.OFFSETS.name} table: it is not a "
                    "queuestream target (check --target)"
                )
                raise ConfigurationError(msg)
            table = offsets.OFFSETS
            rows = conn.execute(
                sa.select(
                    table.c.target,
                    table.c.topic,
                    table.c.partition,
                    table.c.next_offset,
                    table.c.consumer_group,
                )
            ).all()
    finally:
        engine.dispose()
    names = sorted({r.target for r in rows if r.consumer_group == group})
    if not names:
        # Rows written before any consumer of this group ran: go by the sample names.
        names = sorted(
            {
                r.target
                for r in rows
                if r.target in TARGET_NAMES and settings.group_for(r.target) == group
            }
        )
    if not names:
        groups = sorted({r.consumer_group for r in rows})
        msg = (
            f"{describe_url(url)} holds no offsets applied by group {group}"
            + (f" (it holds those of {', '.join(groups)})" if groups else " (none at all)")
            + ": check --group and --target"
        )
        raise ConfigurationError(msg)
    stored = {(r.topic, r.partition): r.next_offset for r in rows if r.target in names}
    return names, stored


def _topics(
    settings: Settings,
    topics: list[str] | None,
    spec: ReplaySpec,
    committed: dict[Partition, int],
    stored: dict[Partition, int],
    group: str,
) -> list[str]:
    if spec.to_offsets is not None:
        chosen = sorted({t for t, _ in spec.to_offsets})
        if topics:
            named = {_topic_name(settings, t) for t in topics}
            chosen = [t for t in chosen if t in named]
        return chosen
    if topics:
        return [_topic_name(settings, t) for t in topics]
    found = sorted({t for t, _ in committed} | {t for t, _ in stored})
    if not found:
        msg = f"group {group} has no committed offsets: name the topics with --topics"
        raise ConfigurationError(msg)
    return found


def _topic_name(settings: Settings, name: str) -> str:
    """``orders`` or ``exigo.orders`` -> ``exigo.orders``."""
    tables = {t.name for t in TABLES}
    return topic_for(settings.topic_prefix, name) if name in tables else name


def plan_replay(
    settings: Settings,
    group: str,
    spec: ReplaySpec,
    *,
    topics: list[str] | None = None,
    target_url: str | None = None,
    now: datetime | None = None,
) -> ReplayPlan:
    """Current and new offsets of every partition to move; changes nothing."""
    now = now or datetime.now(UTC)
    names: list[str] = []
    stored: dict[Partition, int] = {}
    if target_url is not None:  # read first: a target that cannot be read stops at once
        names, stored = _target_offsets(settings, target_url, group)
    admin = admin_client(settings)
    topic_partition_counts(admin, settings)  # an unreachable broker: broker_timeout_seconds
    described = describe_groups(admin, [group])[group]
    committed = group_offsets(admin, [group])[group]
    chosen = _topics(settings, topics, spec, committed, stored, group)
    partitions = partitions_of(admin, chosen)
    bounds = log_bounds(admin, partitions)
    new = _new_offsets(admin, spec, bounds, now)
    moves = [
        OffsetMove(
            topic=t,
            partition=p,
            group_offset=committed.get((t, p)),
            target_offset=stored.get((t, p)) if target_url is not None else None,
            new_offset=new[(t, p)],
            low=bounds[(t, p)].low,
            high=bounds[(t, p)].high,
        )
        for t, p in partitions
        if (t, p) in new
    ]
    if not moves:
        msg = "nothing to move: the offsets file names no partition of the chosen topics"
        raise ConfigurationError(msg)
    return ReplayPlan(
        group=group,
        destination=spec.describe(now),
        state=described.state,
        members=described.members,
        moves=moves,
        target_url=target_url,
        target_names=names,
        skipped=_skipped(settings, moves),
    )


def _skipped(settings: Settings, moves: list[OffsetMove]) -> dict[Partition, int]:
    """Events between the current and the new offset of each forward move.

    Offsets are not events (transaction markers take offsets too), so they are read.
    """
    forward = {
        (m.topic, m.partition, m.current): m.new_offset
        for m in moves
        if m.current is not None and m.new_offset > m.current
    }
    if not forward:
        return {}
    counter = MessageCounter(settings, "queuestream-replay")
    try:
        counted = counter.count(forward)
    finally:
        counter.close()
    return {(t, p): found.count for (t, p, _), found in counted.items() if found.count}


def _new_offsets(
    admin: AdminClient, spec: ReplaySpec, bounds: dict[Partition, LogBounds], now: datetime
) -> dict[Partition, int]:
    moment = spec.moment(now)
    if moment is not None:
        found: dict[Partition, int] = offsets_at(admin, to_ms(moment), bounds)
        return found
    if spec.to_earliest:
        return {p: b.low for p, b in bounds.items()}
    assert spec.to_offsets is not None
    topics = {t for t, _ in bounds}
    wanted = {tp: o for tp, o in spec.to_offsets.items() if tp[0] in topics}
    unknown = sorted(f"{t}[{p}]" for t, p in wanted if (t, p) not in bounds)
    if unknown:
        msg = f"the offsets file names partitions that do not exist: {', '.join(unknown)}"
        raise ConfigurationError(msg)
    return {p: bounds[p].clamp(o) for p, o in wanted.items()}
