"""Applying a batch exactly once (promise 3): rows, consumed offsets and sync log commit together.

A batch (:class:`~consumers.assembly.Batch`: whole refreshes and undecodable
messages) becomes target rows in one transaction of the target database, and
that same transaction stores the offsets the batch consumed
(:class:`~consumers.offsets.OffsetStore`) and one sync-log row per refresh
(:mod:`.sync_log`). All of it commits or none of it does. Kafka hears of the
offsets only afterwards, for lag tools (:mod:`.ownership`).

Apart from commit (Kafka Connect's ``put`` and ``preCommit``), in small pieces
that a SQLite target tests without Kafka:

- :func:`unapplied`: the events of a batch at or past the offsets stored in the
  target. Those below were applied before (by this member before a crash, or by
  another before a rebalance), so a *redelivered* event changes nothing.
- :func:`apply_refresh`: one refresh written through the target, whose version
  check makes a *stale* event (an older version of a key than the row holds)
  change nothing. When the database refuses the refresh as a whole, its events
  are applied again one by one, each in a savepoint, to find the ones to
  dead-letter while the rest commits.
- :func:`write_batch`: every refresh of a batch, with its sync-log entry and
  the dead letters it makes; :func:`next_offsets`: what to store after it.
- :class:`BatchApplier`: the transaction around them: lock the batch's offset
  rows, keep what is new, write it, check the error budget (over it, nothing
  commits), publish the dead letters, store the next offsets and the sync log,
  commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from consumers import sync_log
from consumers.assembly import UNDECODABLE, Batch, Poison, Slot, Tombstone
from consumers.changes import Change
from consumers.dead_letters import DeadLetter, ErrorBudget
from consumers.offsets import OffsetStore, TopicPartition
from consumers.sync_log import SyncEntry
from consumers.target import ApplyReport, Target
from consumers.target_db import is_outage, retriable_outages
from queuestream.errors import RecordError

__all__ = [
    "Applied",
    "BatchApplier",
    "BatchOutcome",
    "apply_refresh",
    "next_offsets",
    "partitions_of",
    "unapplied",
    "write_batch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One applied batch, as reported to the command line."""

    entries: list[SyncEntry]
    seconds: float


@dataclass(frozen=True, slots=True)
class Applied:
    """A batch that committed in the target.

    ``next_offsets``: the offsets stored with it (for the Kafka group too);
    ``skipped``: its events that were applied before and were left alone.
    """

    outcome: BatchOutcome
    next_offsets: dict[TopicPartition, int]
    skipped: int


# -- which events are new ---------------------------------------------------------------
def partitions_of(batch: Batch) -> set[TopicPartition]:
    """The topic partitions ``batch`` consumes from (its tombstones' too)."""
    return {(item.topic, item.partition) for item in _consumed(batch)}


def unapplied(batch: Batch, stored: Mapping[TopicPartition, int]) -> tuple[Batch, int]:
    """``batch`` without the events below the ``stored`` next offsets, and how many those were.

    Refreshes left with no event are dropped. Undecodable messages below the stored
    offsets went to the dead-letter topic before and are dropped too (not counted).
    """
    skipped = 0
    refreshes: list[tuple[str, dict[Slot, list[Change]]]] = []
    for refresh_id, slots in batch.refreshes:
        fresh: dict[Slot, list[Change]] = {}
        for slot, changes in slots.items():
            kept = [c for c in changes if c.offset >= stored.get((c.topic, c.partition), 0)]
            skipped += len(changes) - len(kept)
            if kept:
                fresh[slot] = kept
        if fresh:
            refreshes.append((refresh_id, fresh))
    poison = [p for p in batch.poison if p.offset >= stored.get((p.topic, p.partition), 0)]
    tombstones = [t for t in batch.tombstones if t.offset >= stored.get((t.topic, t.partition), 0)]
    return Batch(refreshes, poison, tombstones), skipped


def next_offsets(batch: Batch) -> dict[TopicPartition, int]:
    """Per topic partition, the offset after the last event (or tombstone) of ``batch``."""
    last: dict[TopicPartition, int] = {}
    for item in _consumed(batch):
        key = (item.topic, item.partition)
        last[key] = max(last.get(key, -1), item.offset)
    return {key: offset + 1 for key, offset in last.items()}


def _items(batch: Batch) -> Iterable[Change | Poison]:
    for _, slots in batch.refreshes:
        for changes in slots.values():
            yield from changes
    yield from batch.poison


def _consumed(batch: Batch) -> Iterable[Change | Poison | Tombstone]:
    """Every message whose offset ``batch`` consumes: its events and its tombstones."""
    yield from _items(batch)
    yield from batch.tombstones


# -- writing rows -------------------------------------------------------------------------
def apply_refresh(
    connection: sa.Connection, target: Target, by_table: Mapping[str, list[Change]]
) -> ApplyReport:
    """Apply one refresh; when the database refuses it, find the events that cause it one by one.

    Each event that the database still refuses on its own is rejected with a
    RecordError naming its table and key; the others are applied. Outages are raised.
    """
    changes = {t: by_table.get(t, []) for t in target.tables}
    report = ApplyReport()
    refused = _in_savepoint(connection, target, changes, report)
    if refused is None:
        return report
    log.warning("a refresh failed as a whole (%s): applying its events one by one", refused)
    report = ApplyReport()
    for table in target.tables:
        for change in changes[table]:
            single = {t: [change] if t == table else [] for t in target.tables}
            refused = _in_savepoint(connection, target, single, report)
            if refused is not None:
                report.reject(change, RecordError(refused, table=table, key=dict(change.key)))
    return report


def _in_savepoint(
    connection: sa.Connection,
    target: Target,
    changes: dict[str, list[Change]],
    report: ApplyReport,
) -> str | None:
    """Apply within a savepoint; a data error rolls it back and is returned, not raised."""
    savepoint = connection.begin_nested()
    try:
        target.apply(connection, changes, report)
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        if is_outage(exc):
            raise
        return _reason(exc)
    savepoint.commit()
    return None


def write_batch(
    connection: sa.Connection, target: Target, batch: Batch
) -> tuple[list[SyncEntry], list[DeadLetter]]:
    """Apply every refresh of ``batch``: its sync-log entries and its dead letters.

    Undecodable messages become dead letters as they are, counted as errors of the
    last refresh (or of an entry of their own, refresh ``-``, when there is none).
    """
    entries: list[SyncEntry] = []
    letters: list[DeadLetter] = []
    for refresh_id, slots in batch.refreshes:
        started = time.monotonic()
        report = apply_refresh(connection, target, batch.tables(slots))
        entries.append(
            SyncEntry(
                refresh_id=refresh_id,
                rows_applied=report.rows,
                events_stale=sum(report.stale.values()),
                errors=len(report.rejected),
                counts={**report.applied, **report.notices},
                offsets=_ranges(c for changes in slots.values() for c in changes),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
        )
        letters.extend(_letter(r.change, r.error) for r in report.rejected)
    if batch.poison:
        letters.extend(batch.poison)
        if entries:
            entries[-1].errors += len(batch.poison)
        else:
            entries.append(
                SyncEntry(
                    refresh_id=UNDECODABLE,
                    errors=len(batch.poison),
                    offsets=_ranges(batch.poison),
                )
            )
    return entries, letters


# -- committing rows plus offsets -----------------------------------------------------------
class BatchApplier:
    """Applies batches to ``target`` in ``engine``'s database, each in one transaction.

    ``dead_letters`` publishes a batch's dead letters and returns once the broker has
    them (it raises a RetriableError otherwise): it runs inside the transaction, before
    the commit, so a dead letter is never lost (at worst sent twice). ``budget`` counts
    them over the life of the consumer.
    """

    def __init__(
        self,
        target: Target,
        engine: sa.Engine,
        offsets: OffsetStore,
        *,
        member: str,
        budget: ErrorBudget,
        dead_letters: Callable[[list[DeadLetter]], None],
    ) -> None:
        self.target = target
        self.engine = engine
        self.offsets = offsets
        self.member = member
        self.budget = budget
        self.dead_letters = dead_letters

    def apply(self, batch: Batch) -> Applied:
        """Commit ``batch``'s new rows, offsets and sync log together, or nothing.

        Raises DatabaseUnavailableError (nothing committed: retry) when the target is
        unreachable, and ErrorBudgetExceededError when the batch's dead letters do not
        fit in the budget.
        """
        started = time.monotonic()
        with retriable_outages(self.engine), self.engine.begin() as conn:
            stored = self.offsets.lock(conn, partitions_of(batch))
            fresh, skipped = unapplied(batch, stored)
            entries, letters = write_batch(conn, self.target, fresh)
            self.budget.check(letters, [e.refresh_id for e in entries])
            self.dead_letters(letters)
            moved = next_offsets(fresh)
            self.offsets.save(conn, moved, stored)
            if entries:
                sync_log.write(conn, self.target.name, self.offsets.group, self.member, entries)
        self.budget.spend(letters)
        return Applied(BatchOutcome(entries, time.monotonic() - started), moved, skipped)


def _ranges(items: Iterable[Change | Poison]) -> dict[str, dict[str, list[int]]]:
    """``{topic: {partition: [first, last]}}`` of ``items``' offsets."""
    found: dict[str, dict[str, list[int]]] = {}
    for item in items:
        per_topic = found.setdefault(item.topic, {})
        span = per_topic.get(str(item.partition))
        if span is None:
            per_topic[str(item.partition)] = [item.offset, item.offset]
        else:
            span[0] = min(span[0], item.offset)
            span[1] = max(span[1], item.offset)
    return found


def _letter(change: Change, error: RecordError) -> DeadLetter:
    return DeadLetter(
        change.topic,
        change.partition,
        change.offset,
        change.timestamp_ms,
        change.raw_key,
        change.raw_value,
        error,
    )


def _reason(exc: sa.exc.DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
