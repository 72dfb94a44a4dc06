"""Which partitions a consumer owns, and where it reads each of them from (promises 3, 4 and 5).

A member of a consumer group (range assignment: the same partition numbers of
every change topic, so everything about one customer) gains and loses
partitions at rebalances. :class:`Ownership` keeps that account, apart from
reading and applying:

- **assignment**: the offsets stored in the target rule, not the group's offsets
  in Kafka. Each partition is read from one before its stored offset (see
  :meth:`Ownership.start_offset`). When the target is down, the partitions wait
  paused until :meth:`Ownership.resolve` can read their offsets.
- **revocation**: the partitions are forgotten, and the runtime is told so that
  it drops what it holds from them (``on_revoke``).
- **pausing**: while the target is down every owned partition is paused, so that
  nothing more is fetched; the group session stays alive meanwhile.
- **the group's offsets**: after the target has committed a batch, the same
  offsets go to the Kafka group for lag tools; on assignment the group's offsets
  are brought level with the target's (a member that died between the two
  commits left them behind).
- **bounded runs** (``queuestream rebuild``): every partition is owned without
  joining the group, each is paused at its stop offset, and nothing is committed
  to Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import sqlalchemy as sa
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from consumers.assembly import Slot
from consumers.offsets import OffsetStore
from consumers.offsets import TopicPartition as Partition
from consumers.target_db import retriable_outages
from queuestream.errors import DatabaseUnavailableError
from queuestream.kafka_clients import assign_at_once

__all__ = ["Ownership"]

log = logging.getLogger(__name__)


class Ownership:
    """The partitions one consumer owns, their read positions, and the group's offsets.

    ``tables`` maps each change topic to its table. ``stops`` (a bounded run): per
    partition the first offset not to read; then no group is joined.
    """

    def __init__(
        self,
        tables: Mapping[str, str],
        engine: sa.Engine,
        offsets: OffsetStore,
        *,
        stops: Mapping[Partition, int] | None = None,
        on_revoke: Callable[[set[Slot]], None] | None = None,
    ) -> None:
        self.tables = dict(tables)
        self.topics = {table: topic for topic, table in self.tables.items()}
        self.engine = engine
        self.offsets = offsets
        self.stops = stops
        self.on_revoke = on_revoke
        self.owned: set[Slot] = set()
        self.at_end: set[Slot] = set()  # owned and read to the end (or to the stop)
        self.unresolved: set[Slot] = set()  # assigned while the target was down
        self.assigned_once = False
        self.paused = False
        self._read_back: dict[Slot, int] = {}  # slot -> stored offset, read from one before
        self._consumer: Consumer | None = None

    # -- taking partitions --------------------------------------------------------------
    def join(self, consumer: Consumer) -> None:
        """Join the group: partitions come and go through the rebalance callbacks."""
        self._consumer = consumer
        consumer.subscribe(
            list(self.tables),
            on_assign=self.assigned,
            on_revoke=self.revoked,
            on_lost=self.revoked,
        )

    def own_all(self, consumer: Consumer) -> None:
        """Bounded run: take every partition that has a stop, without a group."""
        assert self.stops is not None
        self._consumer = consumer
        self.assigned(consumer, [TopicPartition(t, p) for t, p in sorted(self.stops)])

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback: read from the target's offsets (or wait for the target)."""
        slots = self._slots(partitions)
        self.assigned_once = True
        self.owned |= slots
        try:
            stored = self._load(slots)
        except DatabaseUnavailableError as exc:
            log.warning(
                "assigned %d partitions while the target is down (%s): waiting", len(slots), exc
            )
            consumer.assign(partitions)
            consumer.pause(partitions)
            self.unresolved |= slots
            return
        for tp in partitions:
            tp.offset = self.start_offset(tp.topic, tp.partition, stored)
        if self.stops is None:
            consumer.assign(partitions)  # a rebalance callback: the leaders are known
        else:
            assign_at_once(consumer, partitions)  # a bounded run, on a consumer just made
        for tp in partitions:
            self._past_stop(tp.topic, tp.partition, max(tp.offset, 0))
        if self.paused:
            consumer.pause(partitions)
        log.info("assigned %s", _describe(partitions))
        # A member that died between the target commit and the Kafka commit left the
        # group's offsets behind the target's: bring them level for the lag tools.
        self.commit(stored)

    def revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Rebalance callback (revoked or lost): forget the partitions."""
        slots = self._slots(partitions)
        self.owned -= slots
        self.at_end -= slots
        self.unresolved -= slots
        for slot in slots:
            self._read_back.pop(slot, None)
        if self.on_revoke is not None:
            self.on_revoke(slots)
        if partitions:
            log.info("revoked %s", _describe(partitions))

    def start_offset(self, topic: str, partition: int, stored: Mapping[Partition, int]) -> int:
        """Where to read a partition from: one before the target's stored offset.

        Only the events from the stored offset on are applied. The one before it was
        applied already (by us before a restart, or by another member before a
        rebalance); reading it tells which refresh the partition got to, so that the
        refreshes up to that one count as done there. Without it, a refresh still held
        for other partitions would wait for an event of a later refresh on this one,
        which may never come.
        """
        offset = stored.get((topic, partition))
        if offset is None:
            return OFFSET_BEGINNING
        if offset > 0:
            self._read_back[(self.tables[topic], partition)] = offset
            return offset - 1
        return offset

    def resolve(self) -> int:
        """Seek the partitions assigned during an outage to the target's offsets.

        Returns how many were resumed; raises DatabaseUnavailableError while the
        target is still down.
        """
        assert self._consumer is not None
        if not self.unresolved:
            return 0
        stored = self._load(self.unresolved)
        partitions = []
        for table, partition in sorted(self.unresolved):
            topic = self.topics[table]
            tp = TopicPartition(topic, partition, self.start_offset(topic, partition, stored))
            self._consumer.seek(tp)
            partitions.append(tp)
        if not self.paused:
            self._consumer.resume(partitions)
        self.unresolved.clear()
        log.info("the target is back: resuming %d partitions from its offsets", len(partitions))
        return len(partitions)

    def _load(self, slots: set[Slot]) -> dict[Partition, int]:
        with retriable_outages(self.engine), self.engine.connect() as conn:
            return self.offsets.load(conn, {(self.topics[t], p) for t, p in slots})

    def _slots(self, partitions: list[TopicPartition]) -> set[Slot]:
        return {
            (self.tables[tp.topic], tp.partition) for tp in partitions if tp.topic in self.tables
        }

    # -- reading --------------------------------------------------------------------------
    def arrived(self, topic: str, partition: int, offset: int) -> bool:
        """A message was read here: False to ignore it.

        Ignored: past a bounded run's stop, and on a partition waiting to be read again
        from the target's offsets (:meth:`rewind`: fetched before it was paused).
        """
        if self._past_stop(topic, partition, offset):
            return False
        if (self.tables[topic], partition) in self.unresolved:
            return False
        self.at_end.discard((self.tables[topic], partition))
        return True

    def reached_end(self, topic: str, partition: int) -> None:
        """The partition is read to its end (for now)."""
        self.at_end.add((self.tables[topic], partition))

    def read_back(self, topic: str, partition: int, offset: int) -> bool:
        """Is this the event before the stored offset, read only to learn its refresh?"""
        floor = self._read_back.pop((self.tables[topic], partition), None)
        return floor is not None and offset < floor

    @property
    def settled(self) -> bool:
        """Partitions were assigned, their offsets are known, and each is read to its end."""
        return self.assigned_once and not self.unresolved and self.owned <= self.at_end

    def reading(self) -> set[Partition]:
        """The owned partitions whose read position is known (for lag metrics)."""
        return {(self.topics[t], p) for t, p in self.owned - self.unresolved}

    def _past_stop(self, topic: str, partition: int, offset: int) -> bool:
        """Bounded run: is ``offset`` at or past the partition's stop? Then it is at its end."""
        if self.stops is None:
            return False
        if offset < self.stops.get((topic, partition), offset + 1):
            return False
        slot = (self.tables[topic], partition)
        if slot not in self.at_end:
            self.at_end.add(slot)
            if self._consumer is not None:
                self._consumer.pause([TopicPartition(topic, partition)])
        return True

    def rewind(self, slots: set[Slot]) -> None:
        """Read ``slots`` again from the target's offsets (what was read of them is dropped).

        They are paused and wait, like partitions assigned while the target was down,
        for :meth:`resolve` to seek them to the stored offsets.
        """
        slots = slots & self.owned
        if not slots or self._consumer is None:
            return
        self._consumer.pause([TopicPartition(self.topics[t], p) for t, p in sorted(slots)])
        self.unresolved |= slots
        self.at_end -= slots
        for slot in slots:
            self._read_back.pop(slot, None)
        log.info("reading %d partitions again from the target's offsets", len(slots))

    # -- pausing ----------------------------------------------------------------------------
    def hold(self, slots: set[Slot], held: bool) -> None:
        """Pause ``slots`` (nothing more is fetched from them), or resume those that may read."""
        if not slots or self._consumer is None:
            return
        if not held:
            slots = slots - self.unresolved
            if self.stops is not None:  # partitions at their stop stay paused
                slots = slots - self.at_end
            if self.paused:
                return
        partitions = [TopicPartition(self.topics[t], p) for t, p in sorted(slots & self.owned)]
        if partitions:
            (self._consumer.pause if held else self._consumer.resume)(partitions)

    def pause(self, paused: bool) -> None:
        """Pause every assigned partition (the target is down), or resume those that may read."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if paused:
            self._consumer.pause(assignment)
        else:
            waiting = {(self.topics[t], p) for t, p in self.unresolved}
            if self.stops is not None:  # partitions at their stop stay paused
                waiting |= {(self.topics[t], p) for t, p in self.at_end}
            self._consumer.resume(
                [tp for tp in assignment if (tp.topic, tp.partition) not in waiting]
            )
        self.paused = paused

    # -- the group's offsets ------------------------------------------------------------------
    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        """After the target committed: tell Kafka too (for lag tools; the target rules).

        A bounded run (rebuild) is no member of the group: it commits nothing to Kafka.
        """
        if not next_offsets or self._consumer is None or self.stops is not None:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            log.warning(
                "could not commit offsets to group %s (the target has them): %s",
                self.offsets.group,
                exc,
            )

    def committed(self, error: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit`` callback: a failed group commit is only logged."""
        if error is not None:
            log.warning(
                "group %s offset commit failed (the target has them): %s",
                self.offsets.group,
                error.str(),
            )


def _describe(partitions: list[TopicPartition]) -> str:
    """``exigo.orders[0@15,1@start]`` for log lines: partitions (and offsets) per topic."""
    per_topic: dict[str, list[str]] = {}
    for tp in sorted(partitions, key=lambda tp: (tp.topic, tp.partition)):
        where = (
            "" if tp.offset == OFFSET_INVALID else f"@{tp.offset}" if tp.offset >= 0 else "@start"
        )
        per_topic.setdefault(tp.topic, []).append(f"{tp.partition}{where}")
    return ", ".join(f"{t}[{','.join(p)}]" for t, p in per_topic.items()) or "nothing"
