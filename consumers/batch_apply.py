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
  commit. The transaction is an :class:`OpenBatch`, which may also take a batch
  in parts before the commit (a refresh too big to hold, :mod:`.streaming`).

Longer than 400 lines: what is written, the transaction that writes it in parts
and the commit share their figures (:func:`merged` sync-log entries) and read best
in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from consumers import sync_log
from consumers.assembly import Batch, Poison, Slot, Tombstone
from consumers.changes import Change
from consumers.dead_letters import DeadLetter, ErrorBudget
from consumers.offsets import OffsetStore, TopicPartition
from consumers.sync_log import UNDECODABLE, SyncEntry
from consumers.target import ApplyReport, Target
from consumers.target_db import is_outage, retriable_outages
from queuestream.errors import RecordError

__all__ = [
    "Applied",
    "BatchApplier",
    "BatchOutcome",
    "OpenBatch",
    "apply_refresh",
    "merged",
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
        with self.begin(partitions_of(batch)) as transaction:
            return transaction.commit(batch)

    def begin(self, partitions: Iterable[TopicPartition]) -> OpenBatch:
        """Open a transaction that applies in parts (:class:`OpenBatch`).

        Its offset rows of ``partitions`` are locked at once, in one statement (so two
        members never lock the same rows in different orders). Raises
        DatabaseUnavailableError when the target is unreachable.
        """
        return OpenBatch(self, set(partitions))


class OpenBatch:
    """One target transaction that applies a batch in parts, then commits it whole.

    :meth:`apply` writes a part (a :class:`~consumers.assembly.Batch` of events taken
    out of the assembler while their refreshes are still being read) and forgets its
    events: only their sync-log figures, their offsets' reach and their dead letters
    are kept. :meth:`commit` writes the last part, checks the error budget, publishes
    the dead letters and stores the next offsets and the sync log with the rows, in
    the same transaction: a refresh applied in parts still becomes visible at once.
    :meth:`close` rolls back whatever did not commit (an outage, a revocation, a stop:
    nothing is kept, the events are read again from the stored offsets). A context
    manager: leaving it closes it.
    """

    def __init__(self, applier: BatchApplier, partitions: set[TopicPartition]) -> None:
        self.applier = applier
        self.started = time.monotonic()
        self.skipped = 0
        self._entries: dict[str, SyncEntry] = {}
        self._letters: list[DeadLetter] = []
        self._reach: dict[TopicPartition, int] = {}
        with retriable_outages(applier.engine):
            self._connection = applier.engine.connect()
            try:
                self._transaction = self._connection.begin()
                self._stored = applier.offsets.lock(self._connection, partitions)
            except BaseException:
                self._connection.close()
                raise

    def __enter__(self) -> OpenBatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def refreshes(self) -> set[str]:
        """The refreshes of which a part was applied."""
        return set(self._entries)

    def apply(self, part: Batch) -> None:
        """Write ``part``'s new events; raise when its dead letters overrun the budget."""
        fresh, skipped = unapplied(part, self._stored)
        with retriable_outages(self.applier.engine):
            entries, letters = write_batch(self._connection, self.applier.target, fresh)
        self.skipped += skipped
        for entry in entries:
            earlier = self._entries.get(entry.refresh_id)
            self._entries[entry.refresh_id] = entry if earlier is None else merged(earlier, entry)
        self._letters.extend(letters)
        for key, offset in next_offsets(part).items():
            self._reach[key] = max(self._reach.get(key, 0), offset)
        self.applier.budget.check(self._letters, list(self._entries))

    def commit(self, last: Batch) -> Applied:
        """Write ``last``, then commit everything with its offsets and sync log."""
        self.apply(last)
        applier, conn = self.applier, self._connection
        with retriable_outages(applier.engine):  # before the dead letters: it may wait, or fail
            applier.target.before_commit(conn)
        entries = _fold_undecodable(list(self._entries.values()))
        applier.dead_letters(self._letters)
        moved = {key: o for key, o in self._reach.items() if o > self._stored.get(key, 0)}
        with retriable_outages(applier.engine):
            applier.offsets.save(conn, moved, self._stored)
            if entries:
                sync_log.write(
                    conn, applier.target.name, applier.offsets.group, applier.member, entries
                )
            self._transaction.commit()
        self._connection.close()
        applier.budget.spend(self._letters)
        seconds = time.monotonic() - self.started
        return Applied(BatchOutcome(entries, seconds), moved, self.skipped)

    def close(self) -> None:
        """Roll back what did not commit (nothing when the target is gone already)."""
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
            self._connection.close()
        except sa.exc.SQLAlchemyError as exc:  # the connection is lost: so is the transaction
            log.debug("rolling back an uncommitted batch: %s", exc)


def merged(first: SyncEntry, then: SyncEntry) -> SyncEntry:
    """One refresh's sync-log entry from those of two parts applied one after the other."""
    counts = dict(first.counts)
    for name, n in then.counts.items():
        counts[name] = counts.get(name, 0) + n
    offsets = {
        topic: {p: list(span) for p, span in spans.items()}
        for topic, spans in first.offsets.items()
    }
    for topic, spans in then.offsets.items():
        per_topic = offsets.setdefault(topic, {})
        for partition, (start, end) in spans.items():
            span = per_topic.setdefault(partition, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    return SyncEntry(
        refresh_id=first.refresh_id,
        rows_applied=first.rows_applied + then.rows_applied,
        events_stale=first.events_stale + then.events_stale,
        errors=first.errors + then.errors,
        counts=counts,
        offsets=offsets,
        duration_ms=first.duration_ms + then.duration_ms,
    )


def _fold_undecodable(entries: list[SyncEntry]) -> list[SyncEntry]:
    """Undecodable messages count as errors of the last refresh, when the batch has one.

    :func:`write_batch` does so within one part; a last part without events of its own
    leaves them in an entry of their own (refresh ``-``), folded here.
    """
    lone = [e for e in entries if not e.is_refresh]
    rest = [e for e in entries if e.is_refresh]
    if not lone or not rest:
        return entries
    rest[-1].errors += sum(e.errors for e in lone)
    return rest


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
