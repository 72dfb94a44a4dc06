"""Move a consumer group to a point in time, the earliest offsets or given offsets (promise 7).

``queuestream replay`` reads where to move (:mod:`consumers.replay_inputs`), then
plans (:mod:`consumers.replay_plan`): per topic and partition the group's current
offset, the offset the sample target holds (when ``--target`` names one) and the
new offset. Without ``--execute`` that is all it does (a dry run). With it, this
module carries the plan out:

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

The names of all three steps are importable from here, the command's one entry.

Replaying into a target that still holds its rows changes nothing there: every
replayed event is no newer than what the target holds and counts as stale. It
restores rows a target lost (deleted by hand, restored from an older backup).
To see a target as it was at a time, rebuild it (:mod:`.rebuild`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy.dialects import postgresql, sqlite

from consumers import offsets
from consumers.replay_inputs import ReplaySpec, parse_duration, read_offsets_file
from consumers.replay_plan import OffsetMove, ReplayPlan, plan_replay
from queuestream.databases import create_engine, describe_url, unavailable
from queuestream.errors import ConfigurationError, QueuestreamError
from queuestream.kafka_clients import admin_client
from queuestream.kafka_offsets import describe_groups
from queuestream.settings import Settings

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
            try:
                _move_target(plan)
            except QueuestreamError as exc:
                # Its "nothing was committed" is the target's: the group's offsets moved.
                msg = f"{exc} (the group's offsets in Kafka did move; only the target's did not)"
                raise type(exc)(msg) from None
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
    engine = create_engine(plan.target_url, writer=True, existing="the target")
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
        # An outage (retry later) or a mistake to fix (a refused password, a user that
        # may not write): the one classification every command makes.
        failure = unavailable(exc, engine)
        lines = " ".join(f"{m.topic},{m.partition},{m.new_offset}" for m in plan.moves)
        msg = (
            f"cannot move the offsets stored in the target: {failure}; then replay again "
            f"with --to-offsets of a file holding these lines: {lines}"
        )
        raise type(failure)(msg) from None
    finally:
        engine.dispose()
