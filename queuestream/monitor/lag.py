"""Consumer groups' lag: the one place it is computed.

Events are produced in Kafka transactions, so every partition a refresh wrote
ends with a commit marker: a caught-up group's committed offset sits one (or
more) below the log end. Lag is therefore not ``end - committed``: a
read_committed reader starts at the committed offset and counts the messages a
member would still be given (:class:`~queuestream.kafka_reading.MessageCounter`).
None before the end: the group is caught up (0 messages, 0 s). Otherwise the lag
in seconds is the age of the first unconsumed message, which keeps growing while
a group is stopped. Very large lags are estimated past a limit and marked as not
exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka.admin import AdminClient

from queuestream.kafka_offsets import describe_groups, group_offsets, list_groups
from queuestream.kafka_reading import MessageCounter, Unconsumed
from queuestream.monitor.snapshot import GroupInfo, PartitionLag, TopicInfo

__all__ = ["group_lags", "partition_lag"]


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


def group_lags(
    admin: AdminClient,
    counter: MessageCounter,
    topics: Sequence[TopicInfo],
    now_ms: int,
    only: Sequence[str] = (),
) -> tuple[GroupInfo, ...]:
    """Every group with committed offsets on ``topics`` (of ``only`` when given), with its lag."""
    by_name = {t.name: t for t in topics}
    names = list_groups(admin)
    if only:
        names = [n for n in names if n in only]
    committed = _committed(admin, names, set(by_name))
    if not committed:
        return ()
    described = {
        name: (group.state, len(group.members))
        for name, group in describe_groups(admin, sorted(committed)).items()
    }
    starts: dict[tuple[str, int, str], int] = {}  # (topic, partition, group) -> start
    for name, offsets in committed.items():
        for topic in by_name:
            if not any(t == topic for t, _ in offsets):
                continue
            for info in by_name[topic].partitions:
                position = offsets.get((topic, info.partition), info.earliest)
                starts[(topic, info.partition, name)] = max(position, info.earliest)
    wanted = {
        (topic, p, start): by_name[topic].partitions[p].stable_end
        for (topic, p, _), start in starts.items()
    }
    unconsumed = counter.count(wanted)
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


def _committed(
    admin: AdminClient, names: list[str], topics: set[str]
) -> dict[str, dict[tuple[str, int], int]]:
    """Offsets each group committed on ``topics``; groups with none are left out."""
    found: dict[str, dict[tuple[str, int], int]] = {}
    for name, offsets in group_offsets(admin, names).items():
        ours = {tp: o for tp, o in offsets.items() if tp[0] in topics}
        if ours:
            found[name] = ours
    return found
