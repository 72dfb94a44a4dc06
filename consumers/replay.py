"""Move a consumer group to a point in time, the earliest offsets or given offsets (promise 7).

``queuestream replay`` plans first: per topic and partition the group's current
offset, the offset the sample target holds (when ``--target`` names one) and the
new offset. Without ``--execute`` that is all it does (a dry run). With it:

1. it refuses while the group has active members (unless ``--force``): Kafka's
   coordinator only lets a client that is no member move an empty group's offsets,
   and a running member would carry on from where it is anyway. ``--force`` skips
   this check only; Kafka still refuses while members are alive, and then nothing
   has moved;
2. for a sample target, it moves the offsets stored in the target database, in one
   transaction: the sample consumers resume from those, not from Kafka's, and bring
   the group's offsets level with them on assignment;
3. it moves the group's offsets in Kafka (AdminClient.alter_consumer_group_offsets,
   the same offsets ``kafka-consumer-groups`` shows).

New offsets are clamped into the retained log (oldest retained offset .. log end).
Times resolve with offsets-for-times (:mod:`.positions`): the first message
stamped at or after the time, as ``kafka-consumer-groups --to-datetime`` does.

Replaying into a target that still holds its rows changes nothing there: every
replayed event is no newer than what the target holds and counts as stale. It
restores rows a target lost (deleted by hand, restored from an older backup).
To see a target as it was at a time, rebuild it (:mod:`.rebuild`).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy.dialects import postgresql, sqlite

from consumers import TARGET_NAMES, offsets
from queuestream.databases import create_engine, describe_url
from queuestream.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
)
from queuestream.kafka_clients import admin_client
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

__all__ = [
    "OffsetMove",
    "ReplayPlan",
    "ReplaySpec",
    "execute_replay",
    "parse_duration",
    "plan_replay",
    "read_offsets_file",
]

log = logging.getLogger(__name__)

_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """Where to move: exactly one of a time, a duration back from now, earliest, offsets."""

    to_datetime: datetime | None = None
    by_duration: timedelta | None = None
    to_earliest: bool = False
    to_offsets: dict[Partition, int] | None = None

    def __post_init__(self) -> None:
        chosen = [
            self.to_datetime is not None,
            self.by_duration is not None,
            self.to_earliest,
            self.to_offsets is not None,
        ]
        if sum(chosen) != 1:
            msg = (
                "say where to move: one of --to-datetime, --by-duration, --to-earliest, "
                "--to-offsets"
            )
            raise ConfigurationError(msg)

    def moment(self, now: datetime) -> datetime | None:
        if self.to_datetime is not None:
            return self.to_datetime
        if self.by_duration is not None:
            return now - self.by_duration
        return None

    def describe(self, now: datetime) -> str:
        moment = self.moment(now)
        if moment is not None:
            return f"to {moment.astimezone(UTC).isoformat()}"
        if self.to_earliest:
            return "to the earliest offsets"
        return "to the given offsets"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """``PT2H30M`` (ISO 8601, as kafka-consumer-groups takes it), or ``2h30m``, ``90s``, ``1d``."""
    value = text.strip()
    iso = _ISO_DURATION.fullmatch(value)
    if iso is not None and any(iso.groupdict().values()):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return timedelta(
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    pieces = _DURATION.findall(value)
    if pieces and "".join(f"{n}{u}" for n, u in pieces) == re.sub(r"\s+", "", value):
        return timedelta(**{_UNITS[u.lower()]: float(n) for n, u in pieces})
    msg = f"--by-duration {text!r} is not a duration: use PT2H30M, 2h30m, 45m or 1d"
    raise ConfigurationError(msg)


def read_offsets_file(path: Path) -> dict[Partition, int]:
    """``topic,partition,offset`` lines (the format of ``kafka-consumer-groups --export``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read offsets file {path}: {exc.strerror}"
        raise ConfigurationError(msg) from None
    found: dict[Partition, int] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            topic, partition, offset = (cell.strip() for cell in row)
            key, value = (topic, int(partition)), int(offset)
        except ValueError:
            msg = f"{path} line {number}: {','.join(row)!r} is not 'topic,partition,offset'"
            raise ConfigurationError(msg) from None
        if value < 0 or key in found:
            why = "a negative offset" if value < 0 else f"{topic}[{partition}] a second time"
            msg = f"{path} line {number}: {why}; give each partition once, with an offset >= 0"
            raise ConfigurationError(msg)
        found[key] = value
    if not found:
        msg = f"{path} holds no offsets (expected lines 'topic,partition,offset')"
        raise ConfigurationError(msg)
    return found


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
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
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
    admin = admin_client(settings)
    described = describe_groups(admin, [group])[group]
    committed = group_offsets(admin, [group])[group]
    names: list[str] = []
    stored: dict[Partition, int] = {}
    if target_url is not None:
        names, stored = _target_offsets(settings, target_url, group)
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


def execute_replay(settings: Settings, plan: ReplayPlan, *, force: bool = False) -> ReplayPlan:
    """Move the group's offsets in Kafka, then the target's; returns the plan, executed."""
    admin = admin_client(settings)
    described = describe_groups(admin, [plan.group])[plan.group]
    members = described.members
    if members and not force:
        msg = (
            f"group {plan.group} has {len(members)} active member(s) ({', '.join(members)}): "
            "stop them first (their offsets would win), or pass --force"
        )
        raise ConfigurationError(msg)
    if plan.target_url is not None and not members:
        # The target first: the sample consumers resume from it, and on assignment they
        # bring the group's offsets in Kafka level with it, should the next step fail.
        _move_target(plan)
        try:
            _alter_group(admin, plan, members)
        except ConfigurationError as exc:
            msg = (
                f"{exc} The offsets stored in {describe_url(plan.target_url)} did move: the "
                "sample consumers resume from those and bring the group level when they start"
            )
            raise ConfigurationError(msg) from None
    else:
        # With live members (--force) Kafka likely refuses: then nothing has moved.
        _alter_group(admin, plan, members)
        if plan.target_url is not None:
            _move_target(plan)
    plan.state, plan.members, plan.executed = described.state, members, True
    log.info("moved %d partitions of group %s %s", len(plan.moves), plan.group, plan.destination)
    return plan


def _alter_group(admin: AdminClient, plan: ReplayPlan, members: list[str]) -> None:
    request = ConsumerGroupTopicPartitions(
        plan.group, [TopicPartition(m.topic, m.partition, m.new_offset) for m in plan.moves]
    )
    try:
        [future] = admin.alter_consumer_group_offsets([request], request_timeout=_TIMEOUT).values()
        result = future.result()
        errors = [tp.error.str() for tp in result.topic_partitions or [] if tp.error is not None]
    except KafkaException as exc:
        errors = [exc.args[0].str()]
    if not errors:
        return
    reasons = ", ".join(f"{e} ({errors.count(e)} partitions)" for e in dict.fromkeys(errors))
    hint = (
        f"; Kafka does not move the offsets of a group with live members: stop "
        f"{', '.join(members)} (a member that died counts until its session times out)"
        if members
        else ""
    )
    msg = f"Kafka refused to move the offsets of group {plan.group}: {reasons}{hint}"
    raise ConfigurationError(msg)


def _move_target(plan: ReplayPlan) -> None:
    """Write the new offsets into the target's ``queuestream_offsets``, one transaction."""
    assert plan.target_url is not None
    engine = create_engine(plan.target_url, writer=True)
    now = datetime.now(UTC)
    rows = [
        {
            "target": name,
            "topic": m.topic,
            "partition": m.partition,
            "next_offset": m.new_offset,
            "consumer_group": plan.group,
            "updated_at": now,
        }
        for name in plan.target_names
        for m in plan.moves
    ]
    try:
        with engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(offsets.OFFSETS)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["target", "topic", "partition"],
                    set_={
                        "next_offset": insert.excluded.next_offset,
                        "consumer_group": insert.excluded.consumer_group,
                        "updated_at": insert.excluded.updated_at,
                    },
                ),
                rows,
            )
    except sa.exc.DBAPIError as exc:
        lines = " ".join(f"{m.topic},{m.partition},{m.new_offset}" for m in plan.moves)
        msg = (
            f"cannot move the offsets stored in {describe_url(plan.target_url)} "
            f"({_first_line(exc)}); once the target is back, replay again with --to-offsets "
            f"of a file holding these lines: {lines}"
        )
        raise DatabaseUnavailableError(msg) from None
    finally:
        engine.dispose()


def _first_line(exc: sa.exc.DBAPIError) -> str:
    text = str(exc.orig if exc.orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
