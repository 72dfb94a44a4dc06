"""Batch-consistent apply: holding events until a refresh is whole on our partitions.

Events arrive partition by partition, in any interleaving. A refresh is *ready*
when its END marker is known and, for every partition this instance owns, it
holds as many of the refresh's events as the marker counts there, or the
partition has already moved on to a later refresh (a replay that started in the
middle of one). Ready refreshes are applied in the order the producer committed
them (the END markers' order) and never past one that is not ready, so the
offsets stored with a batch never skip unapplied events. Nor past one whose END
marker is not known yet: a refresh is taken only when no other refresh held has
events before its own on one of its partitions. Markers are read apart from the
events (:mod:`.markers`), so an earlier refresh's marker can be missing while a
later one's is known: after the reader looks back for an old event, or when a
long history holds more markers than are kept in memory.

Tombstones (a key with a null value, written after each delete for compacted
topics) are no events: END markers do not count them and nothing applies them.
Each is held only so that the offsets stored with a batch move past it: beside
the refresh of the event read before it on its partition (the delete it
follows, in the same Kafka transaction), or, when that refresh was applied
already, with the next batch, or a batch of its own once the partition is read
to its end. So a partition whose last message is a tombstone is not left one
message behind (lag tools would show it as lag forever).

Messages that cannot be decoded have no refresh. They ride with the next batch
that covers later offsets of their partition, or, when nothing else is waiting on
that partition and it is read to its end, form a batch of their own: either way
they reach the dead-letter topic (or stop the consumer) before their offset is
stored.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

from consumers.changes import Change
from consumers.dead_letters import DeadLetter
from consumers.markers import EndMarker
from queuestream.tables import TABLES

__all__ = ["Assembler", "Batch", "Poison", "Slot", "Tombstone"]

log = logging.getLogger(__name__)

Slot = tuple[str, int]  # (table, partition)

_ORDER = {t.name: i for i, t in enumerate(TABLES)}


#: A message that could not be decoded: it waits here as the dead letter it will be.
Poison: TypeAlias = DeadLetter


def _slot(poison: Poison) -> Slot:
    return (poison.error.table, poison.partition)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A message with a null value (a key's tombstone): skipped, but its offset is consumed."""

    table: str
    topic: str
    partition: int
    offset: int


@dataclass
class _Held:
    refresh_id: str
    changes: dict[Slot, list[Change]] = field(default_factory=lambda: defaultdict(list))
    tombstones: dict[Slot, list[Tombstone]] = field(default_factory=lambda: defaultdict(list))
    #: Per slot, events already taken out (:meth:`Assembler.take`): applied in the open
    #: transaction, not committed yet. They count towards the refresh being whole.
    streamed: dict[Slot, int] = field(default_factory=dict)
    #: Per slot, the first and the last offset taken out.
    streamed_span: dict[Slot, tuple[int, int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Events held in memory (those taken out not counted)."""
        return sum(len(v) for v in self.changes.values())

    @property
    def kept(self) -> bool:
        """Is anything of the refresh still held or taken out (uncommitted)?"""
        return bool(self.changes) or bool(self.streamed)


class _Firsts:
    """Per slot, the first refresh queued there that the batch being made has not taken
    (refreshes are taken in order, so those taken are the first ones)."""

    def __init__(self, queued: dict[Slot, dict[str, None]]) -> None:
        self._queued = queued
        self._rest: dict[Slot, Iterator[str]] = {}
        self._first: dict[Slot, str | None] = {}

    def first(self, slot: Slot) -> str | None:
        if slot not in self._first:
            rest = self._rest[slot] = iter(self._queued.get(slot, ()))
            self._first[slot] = next(rest, None)
        return self._first[slot]

    def take(self, slot: Slot) -> None:
        self.first(slot)
        self._first[slot] = next(self._rest[slot], None)


def _starts(held: _Held) -> dict[Slot, int]:
    """Per slot, the first offset of ``held``'s events there (read, or taken out)."""
    starts = {slot: changes[0].offset for slot, changes in held.changes.items() if changes}
    for slot, (start, _) in held.streamed_span.items():
        starts[slot] = min(starts.get(slot, start), start)
    return starts


@dataclass
class Batch:
    """Refreshes (whole on our partitions) and undecodable messages, applied in one transaction."""

    refreshes: list[tuple[str, dict[Slot, list[Change]]]]
    poison: list[Poison]
    #: Tombstones whose offsets the batch consumes (nothing is applied for them).
    tombstones: list[Tombstone] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(v) for _, slots in self.refreshes for v in slots.values()) + len(self.poison)

    def tables(self, refresh: dict[Slot, list[Change]]) -> dict[str, list[Change]]:
        """A refresh's changes by table, in foreign-key order, offsets ascending per partition."""
        by_table: dict[str, list[Change]] = defaultdict(list)
        for (table, _), changes in sorted(
            refresh.items(), key=lambda kv: (_ORDER[kv[0][0]], kv[0][1])
        ):
            by_table[table].extend(changes)
        return by_table

    def slots(self) -> set[Slot]:
        found = {slot for _, refresh in self.refreshes for slot in refresh}
        found.update(_slot(p) for p in self.poison)
        return found


class Assembler:
    """Holds decoded events per refresh and says which refreshes are ready."""

    def __init__(self, max_batch_events: int = 50_000) -> None:
        self.max_batch_events = max_batch_events
        self._held: dict[str, _Held] = {}
        self._poison: dict[Slot, list[Poison]] = defaultdict(list)
        self._last: dict[Slot, str] = {}  # refresh of the last event read per slot
        # Refresh of the last event applied on a slot before it was assigned to us (read
        # back from the target's stored offset): that refresh and earlier ones are done
        # there, and their events are not read again.
        self._through: dict[Slot, str] = {}
        # Tombstones read after the refresh before them on their slot was applied.
        self._loose: dict[Slot, list[Tombstone]] = defaultdict(list)
        #: Tombstones read so far (skipped: no event, no dead letter).
        self.tombstones_seen = 0
        # Per slot, the refreshes held there (read or taken out) in the order their first
        # event there was read: offset order. A refresh joins a batch only when it comes
        # first on each of its slots.
        self._queued: dict[Slot, dict[str, None]] = {}
        self._warned_interleaved = False

    # -- intake -------------------------------------------------------------------
    def add(self, change: Change) -> None:
        slot = (change.table, change.partition)
        held = self._held.get(change.refresh_id)
        if held is None:
            held = self._held[change.refresh_id] = _Held(change.refresh_id)
        changes = held.changes[slot]
        if not changes and slot not in held.streamed_span:
            self._queued.setdefault(slot, {})[change.refresh_id] = None
        changes.append(change)
        self._last[slot] = change.refresh_id

    def add_tombstone(self, tombstone: Tombstone) -> None:
        """A tombstone was read: held beside the refresh it follows, to move offsets past it."""
        self.tombstones_seen += 1
        slot = (tombstone.table, tombstone.partition)
        held = self._held.get(self._last.get(slot, ""))
        if held is not None and (held.changes.get(slot) or held.streamed.get(slot)):
            held.tombstones[slot].append(tombstone)
        else:
            self._loose[slot].append(tombstone)

    def applied_through(self, slot: Slot, refresh_id: str) -> None:
        """``slot``'s events up to those of ``refresh_id`` were applied (by anyone)."""
        self._through[slot] = refresh_id

    def add_poison(self, poison: Poison) -> None:
        self._poison[_slot(poison)].append(poison)

    def revoke(self, slots: Iterable[Slot]) -> None:
        """Forget what was read from partitions this instance no longer owns."""
        gone = set(slots)
        for refresh_id in list(self._held):
            held = self._held[refresh_id]
            for slot in gone & set(held.changes):
                del held.changes[slot]
            for slot in gone & set(held.tombstones):
                del held.tombstones[slot]
            for slot in gone & set(held.streamed):
                del held.streamed[slot]
                del held.streamed_span[slot]
            if not held.kept:
                del self._held[refresh_id]
        for slot in gone:
            self._queued.pop(slot, None)
            self._poison.pop(slot, None)
            self._loose.pop(slot, None)
            self._last.pop(slot, None)
            self._through.pop(slot, None)

    # -- state ----------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not self._held and not any(self._poison.values()) and not any(self._loose.values())

    @property
    def held_events(self) -> int:
        return sum(h.size for h in self._held.values()) + sum(len(p) for p in self._poison.values())

    def pending_refreshes(self) -> list[str]:
        return list(self._held)

    def needed_refreshes(self) -> set[str]:
        """Refreshes held: their END markers are needed to apply them."""
        return set(self._held)

    def last_refresh(self, slot: Slot) -> str | None:
        """The refresh of the last event read on ``slot`` (None: none read since assignment)."""
        return self._last.get(slot)

    def held_sizes(self) -> dict[str, int]:
        """Events held in memory per refresh (those taken out not counted)."""
        return {r: h.size for r, h in self._held.items()}

    def busy_slots(self) -> set[Slot]:
        return {slot for h in self._held.values() for slot, v in h.changes.items() if v}

    def first_held(self) -> dict[Slot, int]:
        """Per slot, the offset of the first event held (read, not applied yet)."""
        first: dict[Slot, int] = {}
        starts = [_starts(held) for held in self._held.values()]
        starts += [{slot: items[0].offset} for slot, items in self._poison.items() if items]
        for found in starts:
            for slot, start in found.items():
                first[slot] = min(first.get(slot, start), start)
        return first

    # -- readiness ------------------------------------------------------------------
    def _order(self, ends: dict[str, EndMarker]) -> list[str]:
        unknown = 1 << 62
        return sorted(self._held, key=lambda r: (ends[r].offset if r in ends else unknown, r))

    def _passed(self, slot: Slot, end: EndMarker, ends: dict[str, EndMarker]) -> bool:
        """Has ``slot`` moved on to a refresh committed after ``end``'s?

        When the last refresh read there has no marker in ``ends``, its marker is either
        not read yet (a later refresh) or was forgotten long ago (an earlier one, on a
        partition that has been quiet since): refresh ids start with their start time,
        so the ids tell which.
        """
        last = self._last.get(slot)
        if last is None or last == end.refresh_id:
            return False
        later = ends.get(last)
        if later is None:
            return bool(last > end.refresh_id)
        return bool(later.offset > end.offset)

    def _done_before(self, slot: Slot, end: EndMarker, ends: dict[str, EndMarker]) -> bool:
        """Were ``end``'s events on ``slot`` applied before we were assigned ``slot``?"""
        through = self._through.get(slot)
        marker = ends.get(through) if through is not None else None
        return marker is not None and marker.offset >= end.offset

    def _whole(
        self, held: _Held, end: EndMarker, owned: set[Slot], ends: dict[str, EndMarker]
    ) -> bool:
        for slot in owned:
            expected = end.expected(*slot)
            if expected is None or expected == 0:
                continue
            have = len(held.changes.get(slot, ())) + held.streamed.get(slot, 0)
            if (
                have >= expected
                or self._passed(slot, end, ends)
                or self._done_before(slot, end, ends)
            ):
                continue
            if have + len(self._poison.get(slot, ())) >= expected:
                continue  # the missing ones could not be decoded; they ride along as poison
            return False
        return True

    def ready(
        self, ends: dict[str, EndMarker], owned: set[Slot], at_end: set[Slot]
    ) -> Batch | None:
        """The next batch to apply, or None. ``at_end``: owned slots read to their end."""
        refreshes: list[tuple[str, dict[Slot, list[Change]]]] = []
        tombstones: list[Tombstone] = []
        size = 0
        firsts = _Firsts(self._queued)
        for refresh_id in self._order(ends):
            end = ends.get(refresh_id)
            held = self._held[refresh_id]
            if end is None or not self._whole(held, end, owned, ends):
                break
            slots = list(_starts(held))
            before = next((f for f in map(firsts.first, slots) if f != refresh_id), None)
            if before is not None:  # events of a refresh not in the batch come first there
                if before in ends:
                    self._interleaved(refresh_id, before)
                break
            if refreshes and size + held.size > self.max_batch_events:
                break
            for slot in slots:
                firsts.take(slot)
            refreshes.append((refresh_id, dict(held.changes)))
            tombstones.extend(t for items in held.tombstones.values() for t in items)
            size += held.size
        poison = self._poison_for(refreshes, at_end)
        # Loose tombstones follow what was applied already: any batch may consume them,
        # and those of a partition read to its end make a batch of their own if need be.
        loose = [
            t
            for slot, items in self._loose.items()
            if refreshes or poison or slot in at_end
            for t in items
        ]
        if not refreshes and not poison and not loose:
            return None
        return Batch(refreshes, poison, tombstones + loose)

    def _interleaved(self, refresh_id: str, before: str) -> None:
        """``before`` committed after ``refresh_id`` (its END marker came later) but has
        events before it on a partition: two producers write the same topics at once.
        Their refreshes cannot be applied in commit order without skipping events, so
        neither is applied; the log says why, once."""
        if self._warned_interleaved:
            return
        self._warned_interleaved = True
        log.error(
            "refresh %s has events after those of refresh %s on a partition, but committed "
            "first: two producers write these topics at once (one producer per topic "
            "prefix; give each source its own topic_prefix). Nothing after them is applied.",
            refresh_id,
            before,
        )

    def _poison_for(
        self, refreshes: list[tuple[str, dict[Slot, list[Change]]]], at_end: set[Slot]
    ) -> list[Poison]:
        reach: dict[Slot, int] = {}
        for refresh_id, slots in refreshes:
            for slot, changes in slots.items():
                if changes:
                    reach[slot] = max(reach.get(slot, -1), changes[-1].offset)
            for slot, (_, last) in self._held[refresh_id].streamed_span.items():
                reach[slot] = max(reach.get(slot, -1), last)
        taken_refreshes = {r for r, _ in refreshes}
        still_busy = {
            slot
            for r, h in self._held.items()
            if r not in taken_refreshes
            for slot, v in h.changes.items()
            if v
        }
        found: list[Poison] = []
        for slot, items in self._poison.items():
            if slot in reach:
                found.extend(p for p in items if p.offset < reach[slot])
            elif slot not in still_busy and slot in at_end:
                found.extend(items)  # nothing else waits on this partition: apply on its own
        return found

    def take(self, refresh_ids: Iterable[str]) -> Batch:
        """Take the events held of ``refresh_ids`` out, to apply in an open transaction.

        The refreshes stay known: what was taken counts towards their being whole
        (:meth:`ready`), and :meth:`done` forgets them once their batch committed.
        Their tombstones go with the events they follow.
        """
        refreshes: list[tuple[str, dict[Slot, list[Change]]]] = []
        tombstones: list[Tombstone] = []
        for refresh_id in refresh_ids:
            held = self._held.get(refresh_id)
            if held is None or not held.changes:
                continue
            taken = {slot: changes for slot, changes in held.changes.items() if changes}
            for slot, changes in taken.items():
                held.streamed[slot] = held.streamed.get(slot, 0) + len(changes)
                start, _ = held.streamed_span.get(slot, (changes[0].offset, 0))
                held.streamed_span[slot] = (start, changes[-1].offset)
                tombstones.extend(held.tombstones.pop(slot, ()))
            held.changes.clear()
            refreshes.append((refresh_id, taken))
        return Batch(refreshes, [], tombstones)

    def done(self, batch: Batch) -> None:
        """Forget what ``batch`` applied (after it committed), what was taken out too."""
        taken = set(batch.tombstones)
        for refresh_id, slots in batch.refreshes:
            held = self._held.get(refresh_id)
            if held is None:
                continue
            for slot in slots:
                held.changes.pop(slot, None)
                # Read while the batch was applied: consumed by a later batch instead.
                late = [t for t in held.tombstones.pop(slot, ()) if t not in taken]
                self._loose[slot].extend(late)
            streamed = list(held.streamed)
            for slot in streamed:
                # Taken out and committed with the batch; tombstones read after the last
                # take follow them: consumed by a later batch.
                self._loose[slot].extend(t for t in held.tombstones.pop(slot, ()) if t not in taken)
            held.streamed.clear()
            held.streamed_span.clear()
            for slot in {*slots, *streamed}:
                queued = self._queued.get(slot)
                if queued is not None and not held.changes.get(slot):
                    queued.pop(refresh_id, None)
                    if not queued:
                        del self._queued[slot]
            if not held.kept:
                del self._held[refresh_id]
        for slot in list(self._loose):
            self._loose[slot] = [t for t in self._loose[slot] if t not in taken]
            if not self._loose[slot]:
                del self._loose[slot]
        applied = {(p.topic, p.partition, p.offset) for p in batch.poison}
        for slot in list(self._poison):
            self._poison[slot] = [
                p for p in self._poison[slot] if (p.topic, p.partition, p.offset) not in applied
            ]
            if not self._poison[slot]:
                del self._poison[slot]
