"""The consumer runtime every target runs on (promises 3, 4, 5 and 6).

One instance is one member of a consumer group (read_committed, no auto-commit,
range assignment so that it owns the same partition numbers of every change topic:
everything about one customer). Its loop:

1. read change events and decode them (undecodable ones are kept as poison);
2. hold them per refresh until the refresh is whole on the partitions it owns
   (:mod:`.assembly`, using the END markers read by :mod:`.markers`);
3. apply ready refreshes in one target-database transaction, in foreign-key
   order, together with the consumed offsets (:mod:`.offsets`) and one sync log
   row per refresh (:mod:`.sync_log`); failed events go to dead-letter topics
   within the error budget (:mod:`.dead_letters`);
4. only then commit the same offsets to the Kafka group, for lag tools.

When the target database is unreachable, nothing is committed: the runtime
pauses its partitions, retries with backoff and goes on when the target is back.
On partition assignment it resumes from the offsets stored in the target. On
SIGTERM (``stop``) it finishes the batch in hand, commits and leaves the group.

A bounded run (:class:`StopAt`, used by ``queuestream rebuild``) owns every
partition without joining the group, applies only the refreshes committed up to a
moment, commits nothing to Kafka, and stops there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumers import offsets, sync_log
from consumers.assembly import UNDECODABLE, Assembler, Batch, Poison, Slot
from consumers.changes import Change, decode_change
from consumers.dead_letters import DeadLetter, DeadLetters, ErrorBudget
from consumers.markers import EndMarkers
from consumers.metrics import ConsumerMetrics
from consumers.sync_log import SyncEntry
from consumers.target import ApplyReport, Target
from queuestream.databases import create_engine, describe_url, unavailable
from queuestream.errors import (
    DatabaseUnavailableError,
    DecodeError,
    FatalError,
    RecordError,
    RetriableError,
)
from queuestream.kafka_clients import consumer_config, ensure_topics
from queuestream.settings import Settings
from queuestream.tables import topic_for
from schemas.avro import AvroCodec

__all__ = ["BatchOutcome", "ConsumerRuntime", "RunStats", "StopAt"]

log = logging.getLogger(__name__)

_CONSUME_BATCH = 10_000
_CONSUME_TIMEOUT = 0.2
_COMMIT_TIMEOUT = 10.0
_LAG_EVERY = 1.0  # seconds between lag updates (metrics) while the loop turns
#: PostgreSQL advisory lock that serialises creating the target's tables: members of a
#: group starting together would otherwise collide in the catalog (UniqueViolation).
_SCHEMA_LOCK = 0x71736368656D61  # "qschema"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One applied batch, as reported to the command line."""

    entries: list[SyncEntry]
    seconds: float


@dataclass(frozen=True, slots=True)
class StopAt:
    """Apply only what had committed at a moment, then stop (``queuestream rebuild``).

    ``offsets``: per change-topic partition, the first offset not to apply (the first
    message stamped after the moment). ``until_ms``: refreshes whose END marker is
    stamped later are not applied, even where their events come earlier.
    ``markers_end``: the batches-topic offset up to which END markers are read before
    the runtime may conclude that what it still holds belongs to later refreshes.
    """

    offsets: dict[tuple[str, int], int]
    until_ms: int
    markers_end: int


@dataclass
class RunStats:
    batches: int = 0
    refreshes: int = 0
    rows: int = 0
    stale: int = 0
    errors: int = 0
    skipped_applied: int = 0  # events below the stored offsets: applied before
    outages: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def _is_outage(exc: sa.exc.DBAPIError) -> bool:
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
        exc.connection_invalidated
    )


class ConsumerRuntime:
    """One consumer group member applying change events to ``target``."""

    def __init__(
        self,
        settings: Settings,
        target: Target,
        *,
        engine: sa.Engine | None = None,
        until_idle: bool = False,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        metrics: ConsumerMetrics | None = None,
        stop_at: StopAt | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.group = settings.group_for(target.name)
        self.engine = engine or create_engine(settings.target_url_for(target.name), writer=True)
        self.until_idle = until_idle
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.metrics = metrics
        self.stop_at = stop_at
        self.member = f"{socket.gethostname()}:{os.getpid()}"
        self.codec = AvroCodec.from_url(settings.topic_prefix, settings.schema_registry_url)
        self.tables = {topic_for(settings.topic_prefix, t): t for t in target.tables}
        self.topics = {t: topic for topic, t in self.tables.items()}
        self.budget = ErrorBudget(settings.max_errors)
        # A rebuild that meets a poison event again writes it again, marked as its own.
        self.dead_letters = DeadLetters(
            settings, target.name, f"{self.group}.rebuild" if stop_at else self.group
        )
        self.assembler = Assembler()
        self.stats = RunStats()
        self._consumer: Consumer | None = None
        self._markers: EndMarkers | None = None
        self._owned: set[Slot] = set()
        self._at_end: set[Slot] = set()
        self._unresolved: set[Slot] = set()  # assigned while the target was down
        self._read_back: dict[Slot, int] = {}  # slot -> stored offset, read from one before
        self._assigned_once = False
        self._paused = False
        self._lag_observed = -_LAG_EVERY  # monotonic time of the last lag update (metrics)

    # -- set-up ---------------------------------------------------------------------
    def _prepare_target(self) -> None:
        with self._database():
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
                self.target.create_schema(conn)
                offsets.create(conn)
                sync_log.create(conn)

    def _check_topics(self) -> None:
        ensure_topics(self.settings)

    @contextmanager
    def _database(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as exc:
            if _is_outage(exc):
                raise unavailable(exc, self.engine) from exc
            raise

    def _retrying(self, what: str, attempt: Callable[[], None]) -> bool:
        """Run ``attempt`` until it succeeds or ``stop`` is set; False when stopped."""
        delay = self.settings.retry_backoff_seconds
        failed = False
        while not self.stop.is_set():
            try:
                attempt()
            except RetriableError as exc:
                if not failed:
                    failed = True
                    self._outage()
                log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
                self._idle_wait(delay)
                delay = min(max(delay * 2, 0.5), self.settings.target_retry_max_seconds)
            else:
                return True
        return False

    def _idle_wait(self, seconds: float) -> None:
        """Wait, keeping the group membership alive (rebalance callbacks still run)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            self._observe()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._consumer is not None:
                for message in self._consumer.consume(
                    num_messages=_CONSUME_BATCH, timeout=min(left, 0.5)
                ):
                    self._take(message)
            else:
                self.stop.wait(min(left, 0.5))

    # -- the loop -------------------------------------------------------------------
    def run(self) -> RunStats:
        started = time.monotonic()
        if not self._retrying(f"target {describe_url(self.engine.url)}", self._prepare_target):
            return self.stats
        if not self._retrying("Kafka", self._check_topics):
            return self.stats
        until_ms = self.stop_at.until_ms if self.stop_at else None
        self._markers = EndMarkers(self.settings, self.codec, self.group, until_ms=until_ms)
        self._markers.needed = self.assembler.needed_refreshes
        self._consumer = Consumer(
            consumer_config(
                self.settings,
                # A bounded run owns every partition and joins no group (see _assign_all).
                f"{self.group}.rebuild" if self.stop_at else self.group,
                **{
                    "enable.partition.eof": True,
                    "partition.assignment.strategy": "range",
                    "client.id": f"queuestream-{self.target.name}-{self.member}",
                    "on_commit": self._committed,
                },
            )
        )
        if self.stop_at is not None:
            self._assign_all()
        else:
            self._consumer.subscribe(
                list(self.tables),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        log.info(
            "consumer %s of group %s applying %s to %s",
            self.member,
            self.group,
            ", ".join(self.tables),
            describe_url(self.engine.url),
        )
        try:
            self._loop()
        finally:
            self.stats.seconds = time.monotonic() - started
            self._close()
        return self.stats

    def _loop(self) -> None:
        assert self._consumer is not None and self._markers is not None
        idle_since: float | None = None
        while not self.stop.is_set():
            if self._unresolved and not self._resolve_offsets():
                self._idle_wait(self.settings.retry_backoff_seconds)
                continue
            for message in self._consumer.consume(
                num_messages=_CONSUME_BATCH, timeout=_CONSUME_TIMEOUT
            ):
                self._take(message)
            self._markers.poll()
            self._observe()
            batch = self.assembler.ready(self._markers.ends, self._owned, self._at_end)
            if batch is not None:
                idle_since = None
                self._apply_until_done(batch)
                continue
            if self.stop_at is not None:
                if self._reached_stop():
                    return
                continue
            if self.until_idle and self._idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= self.settings.idle_seconds:
                    log.info("idle for %.1fs: stopping (--until-idle)", self.settings.idle_seconds)
                    return
            else:
                idle_since = None

    def _idle(self) -> bool:
        return (
            self._assigned_once
            and not self._unresolved
            and self.assembler.empty
            and self._owned <= self._at_end
        )

    def _reached_stop(self) -> bool:
        """Bounded run: every partition read to its stop and every END marker up to it known."""
        assert self._markers is not None and self.stop_at is not None
        if not self._assigned_once or self._unresolved or not self._owned <= self._at_end:
            return False
        if not self.assembler.empty and not self._markers.read_through(self.stop_at.markers_end):
            return False
        if not self.assembler.empty:
            log.info(
                "stopping at the point in time: %d events of %d refreshes committed later "
                "are not applied",
                self.assembler.held_events,
                len(self.assembler.pending_refreshes()),
            )
        return True

    def _assign_all(self) -> None:
        """Bounded run: take every partition of the target's topics, without a group."""
        assert self._consumer is not None and self.stop_at is not None
        partitions = [TopicPartition(t, p) for t, p in sorted(self.stop_at.offsets)]
        self._on_assign(self._consumer, partitions)

    def _past_stop(self, topic: str, partition: int, offset: int) -> bool:
        """Bounded run: is ``offset`` at or past the partition's stop? Then it is at its end."""
        if self.stop_at is None:
            return False
        if offset < self.stop_at.offsets.get((topic, partition), offset + 1):
            return False
        slot = (self.tables[topic], partition)
        if slot not in self._at_end:
            self._at_end.add(slot)
            if self._consumer is not None:
                self._consumer.pause([TopicPartition(topic, partition)])
        return True

    def _take(self, message: Message) -> None:
        error = message.error()
        topic = message.topic() or ""
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and topic in self.tables:
                self._at_end.add((self.tables[topic], message.partition() or 0))
            elif error.fatal():
                msg = f"Kafka consumer failed: {error.str()}"
                raise FatalError(msg)
            else:
                log.warning("Kafka: %s", error.str())
            return
        table = self.tables[topic]
        partition = message.partition() or 0
        offset = message.offset() or 0
        if self._past_stop(topic, partition, offset):
            return
        self._at_end.discard((table, partition))
        _, timestamp_ms = message.timestamp()
        floor = self._read_back.pop((table, partition), None)
        read_back = floor is not None and offset < floor
        try:
            change = decode_change(
                self.codec,
                table,
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp_ms=timestamp_ms,
                raw_key=message.key(),
                raw_value=message.value(),
            )
        except DecodeError as exc:
            if read_back:
                return  # applied (or dead-lettered) before; nothing to learn from it
            self.assembler.add_poison(
                DeadLetter(
                    topic,
                    partition,
                    message.offset() or 0,
                    timestamp_ms,
                    message.key(),
                    message.value(),
                    exc,
                )
            )
            return
        assert self._markers is not None
        self._markers.need(timestamp_ms)
        if read_back:
            # The last event applied here before we owned the partition: it is not applied
            # again, but its refresh and every earlier one are done on this partition.
            self.assembler.applied_through((table, partition), change.refresh_id)
            return
        self.assembler.add(change)

    # -- rebalancing ------------------------------------------------------------------
    def _slots(self, partitions: list[TopicPartition]) -> set[Slot]:
        return {
            (self.tables[tp.topic], tp.partition) for tp in partitions if tp.topic in self.tables
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        slots = self._slots(partitions)
        self._assigned_once = True
        self._owned |= slots
        try:
            stored = self._load_offsets(slots)
        except DatabaseUnavailableError as exc:
            log.warning(
                "assigned %d partitions while the target is down (%s): waiting", len(slots), exc
            )
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._unresolved |= slots
            return
        for tp in partitions:
            tp.offset = self._start_offset(tp.topic, tp.partition, stored)
        consumer.assign(partitions)
        for tp in partitions:
            self._past_stop(tp.topic, tp.partition, max(tp.offset, 0))
        if self._paused:
            consumer.pause(partitions)
        log.info("assigned %s", _describe(partitions))
        # A member that died between the target commit and the Kafka commit left the
        # group's offsets behind the target's: bring them level for the lag tools.
        self._commit_to_group(stored)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        slots = self._slots(partitions)
        self._owned -= slots
        self._at_end -= slots
        self._unresolved -= slots
        for slot in slots:
            self._read_back.pop(slot, None)
        self.assembler.revoke(slots)
        self._observe(force=True)  # metrics: no lag for partitions no longer owned
        if partitions:
            log.info("revoked %s", _describe(partitions))

    def _start_offset(self, topic: str, partition: int, stored: dict[tuple[str, int], int]) -> int:
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

    def _load_offsets(self, slots: set[Slot]) -> dict[tuple[str, int], int]:
        with self._database(), self.engine.connect() as conn:
            found: dict[tuple[str, int], int] = offsets.load(
                conn, self.target.name, {(self.topics[t], p) for t, p in slots}
            )
        return found

    def _resolve_offsets(self) -> bool:
        """Seek partitions assigned during an outage to the target's offsets."""
        assert self._consumer is not None
        try:
            stored = self._load_offsets(self._unresolved)
        except DatabaseUnavailableError:
            return False
        partitions = []
        for table, partition in sorted(self._unresolved):
            topic = self.topics[table]
            tp = TopicPartition(topic, partition, self._start_offset(topic, partition, stored))
            self._consumer.seek(tp)
            partitions.append(tp)
        if not self._paused:
            self._consumer.resume(partitions)
        self._unresolved.clear()
        log.info("the target is back: resuming %d partitions from its offsets", len(partitions))
        return True

    # -- applying ---------------------------------------------------------------------
    def _apply_until_done(self, batch: Batch) -> None:
        delay = self.settings.retry_backoff_seconds
        while True:
            try:
                outcome = self._apply(batch)
            except RetriableError as exc:
                if not self._paused:
                    self._outage()
                    self._pause(True)
                log.warning("%s; retrying in %.1fs", exc, delay)
                self._idle_wait(delay)
                delay = min(max(delay * 2, 0.5), self.settings.target_retry_max_seconds)
                if self.stop.is_set():
                    return
                # Partitions may have moved meanwhile: apply what is still ours.
                rebuilt = self.assembler.ready(
                    self._markers.ends if self._markers else {}, self._owned, self._at_end
                )
                if rebuilt is None:
                    self._pause(False)
                    return
                batch = rebuilt
                continue
            if self._paused:
                log.info("the target is back: applied the batch that waited")
                self._pause(False)
            self.assembler.done(batch)
            self._report(outcome)
            return

    def _pause(self, paused: bool) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if paused:
            self._consumer.pause(assignment)
        else:
            waiting = {(self.topics[t], p) for t, p in self._unresolved}
            if self.stop_at is not None:  # partitions at their stop stay paused
                waiting |= {(self.topics[t], p) for t, p in self._at_end}
            self._consumer.resume(
                [tp for tp in assignment if (tp.topic, tp.partition) not in waiting]
            )
        self._paused = paused

    def _apply(self, batch: Batch) -> BatchOutcome:
        started = time.monotonic()
        partitions = {(self.topics[t], p) for t, p in batch.slots()}
        entries: list[SyncEntry] = []
        letters: list[DeadLetter] = []
        with self._database(), self.engine.begin() as conn:
            applied_before = offsets.lock(conn, self.target.name, self.group, partitions)
            reach: dict[tuple[str, int], int] = {}
            for refresh_id, slots in batch.refreshes:
                refresh_started = time.monotonic()
                fresh: dict[Slot, list[Change]] = {}
                for slot, changes in slots.items():
                    floor = applied_before.get((self.topics[slot[0]], slot[1]), 0)
                    kept = [c for c in changes if c.offset >= floor]
                    self.stats.skipped_applied += len(changes) - len(kept)
                    if kept:
                        fresh[slot] = kept
                if not fresh:
                    continue
                report = self._apply_refresh(conn, batch.tables(fresh))
                entry = SyncEntry(
                    refresh_id=refresh_id,
                    rows_applied=report.rows,
                    events_stale=sum(report.stale.values()),
                    errors=len(report.rejected),
                    counts=dict(report.applied),
                    offsets=_ranges(c for v in fresh.values() for c in v),
                )
                for changes in fresh.values():
                    for c in changes:
                        key = (c.topic, c.partition)
                        reach[key] = max(reach.get(key, -1), c.offset)
                letters.extend(_letter(r.change, r.error) for r in report.rejected)
                entry.duration_ms = int((time.monotonic() - refresh_started) * 1000)
                entries.append(entry)
            poison = [
                p for p in batch.poison if p.offset >= applied_before.get((p.topic, p.partition), 0)
            ]
            if poison:
                letters.extend(poison)
                for p in poison:
                    key = (p.topic, p.partition)
                    reach[key] = max(reach.get(key, -1), p.offset)
                if entries:
                    entries[-1].errors += len(poison)
                else:
                    entries.append(
                        SyncEntry(
                            refresh_id=UNDECODABLE, errors=len(poison), offsets=_ranges(poison)
                        )
                    )
            self.budget.check(letters, [e.refresh_id for e in entries])
            self.dead_letters.publish(letters)
            if self.metrics is not None:
                self.metrics.dead_letters(letters)
            next_offsets = {tp: last + 1 for tp, last in reach.items()}
            offsets.save(conn, self.target.name, self.group, next_offsets, applied_before)
            if entries:
                sync_log.write(conn, self.target.name, self.group, self.member, entries)
        self.budget.spend(letters)
        self._commit_to_group(next_offsets)
        return BatchOutcome(entries, time.monotonic() - started)

    def _apply_refresh(self, conn: sa.Connection, by_table: dict[str, list[Change]]) -> ApplyReport:
        """Apply one refresh; on a data error, find the events that cause it one by one."""
        changes = {t: by_table.get(t, []) for t in self.target.tables}
        report = ApplyReport()
        failed = self._try_apply(conn, changes, report)
        if failed is None:
            return report
        log.warning("a refresh failed as a whole (%s): applying its events one by one", failed)
        report = ApplyReport()
        for table in self.target.tables:
            for change in changes[table]:
                single = {t: [change] if t == table else [] for t in self.target.tables}
                failed = self._try_apply(conn, single, report)
                if failed is not None:
                    report.reject(change, RecordError(failed, table=table, key=dict(change.key)))
        return report

    def _try_apply(
        self, conn: sa.Connection, changes: dict[str, list[Change]], report: ApplyReport
    ) -> str | None:
        """Apply within a savepoint; a data error rolls it back and is returned, not raised."""
        savepoint = conn.begin_nested()
        try:
            self.target.apply(conn, changes, report)
        except sa.exc.DBAPIError as exc:
            savepoint.rollback()
            if _is_outage(exc):
                raise
            return _reason(exc)
        savepoint.commit()
        return None

    def _commit_to_group(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """After the target committed: tell Kafka too (for lag tools; the target rules).

        A bounded run (rebuild) is no member of the group: it commits nothing to Kafka.
        """
        if not next_offsets or self._consumer is None or self.stop_at is not None:
            return
        partitions = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            log.warning(
                "could not commit offsets to group %s (the target has them): %s", self.group, exc
            )

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            log.warning(
                "group %s offset commit failed (the target has them): %s", self.group, error.str()
            )

    def _report(self, outcome: BatchOutcome) -> None:
        self.stats.batches += 1
        for entry in outcome.entries:
            self.stats.refreshes += 1
            self.stats.rows += entry.rows_applied
            self.stats.stale += entry.events_stale
            self.stats.errors += entry.errors
            for name, n in entry.counts.items():
                self.stats.counts[name] = self.stats.counts.get(name, 0) + n
            log.info(
                "refresh %s: %s (%d stale) in %d ms",
                entry.refresh_id,
                entry.summary(),
                entry.events_stale,
                entry.duration_ms,
            )
        if self.metrics is not None:
            self.metrics.batch(outcome)
            self._observe(force=True)
        if self.on_batch is not None:
            self.on_batch(outcome)

    def _outage(self) -> None:
        """The target (or Kafka) became unreachable: the run waits and retries."""
        self.stats.outages += 1
        if self.metrics is not None:
            self.metrics.outage()

    def _observe(self, *, force: bool = False) -> None:
        """Metrics: the lag of every owned partition.

        The loop and the waits call it on every turn, so it runs at most once every
        ``_LAG_EVERY`` seconds there; after a batch and a revocation it runs at once.
        The lag is the cached log end minus the first offset held unapplied (else the
        position).
        """
        if self.metrics is None or self._consumer is None:
            return
        now = time.monotonic()
        if not force and now - self._lag_observed < _LAG_EVERY:
            return
        self._lag_observed = now
        held = {(self.topics[t], p): o for (t, p), o in self.assembler.first_held().items()}
        owned = {(self.topics[t], p) for t, p in self._owned - self._unresolved}
        self.metrics.observe_lag(self._consumer, owned, held)

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group at once
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer: %s", exc)
        if self._markers is not None:
            self._markers.close()
        self.dead_letters.close()


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


def _describe(partitions: list[TopicPartition]) -> str:
    """``exigo.orders[0@15,1@start]`` for log lines: partitions (and offsets) per topic."""
    per_topic: dict[str, list[str]] = {}
    for tp in sorted(partitions, key=lambda tp: (tp.topic, tp.partition)):
        where = (
            "" if tp.offset == OFFSET_INVALID else f"@{tp.offset}" if tp.offset >= 0 else "@start"
        )
        per_topic.setdefault(tp.topic, []).append(f"{tp.partition}{where}")
    return ", ".join(f"{t}[{','.join(p)}]" for t, p in per_topic.items()) or "nothing"


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
