"""The consumer runtime every target runs on (promises 3, 4, 5 and 6).

One instance is one member of a consumer group (read_committed, no auto-commit,
range assignment so that it owns the same partition numbers of every change topic:
everything about one customer). Its loop:

1. read change events and decode them, undecodable ones kept as poison (:mod:`.intake`);
2. hold them per refresh until the refresh is whole on the partitions it owns
   (:mod:`.assembly`, using the END markers read by :mod:`.markers`);
3. apply ready refreshes in one target-database transaction, together with the
   consumed offsets and one sync log row per refresh; failed events go to
   dead-letter topics within the error budget (:mod:`.batch_apply`). A refresh too
   big to hold is applied in parts as it arrives, inside one transaction left open
   until it is whole (:mod:`.streaming`): it still commits at once, with its offsets;
4. only then commit the same offsets to the Kafka group, for lag tools.

Which partitions it owns and where it reads them from, through rebalances and
outages, is :mod:`.ownership`'s account. When the target database is unreachable,
nothing is committed: the runtime pauses its partitions and retries with backoff
(:mod:`queuestream.retry`), and every wait keeps polling Kafka so that the group
session and the rebalance callbacks stay alive. On SIGTERM (``stop``) it finishes
the batch in hand, commits and leaves the group; a refresh being applied in parts is
rolled back instead (it is read again from the target's offsets on the next start).

Longer than 400 lines: the loop, its waits and the two ways of applying (whole
batches, and parts inside an open transaction) read best side by side.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from confluent_kafka import Consumer

from consumers import target_db
from consumers.assembly import Assembler, Batch, Slot
from consumers.batch_apply import Applied, BatchApplier, BatchOutcome
from consumers.dead_letters import DeadLetter, DeadLetters, ErrorBudget
from consumers.intake import Intake
from consumers.markers import EndMarkers
from consumers.metrics import ConsumerMetrics
from consumers.offsets import OffsetStore
from consumers.ownership import Ownership
from consumers.streaming import Streaming
from consumers.target import Target
from queuestream.databases import create_engine, describe_url
from queuestream.errors import RetriableError
from queuestream.kafka_clients import (
    batches_topic,
    close_consumer,
    consume_arrived,
    consumer_config,
    ensure_topics,
)
from queuestream.retry import Outage, retry
from queuestream.settings import Settings
from queuestream.tables import topic_for
from schemas.avro import AvroCodec

__all__ = ["BatchOutcome", "ConsumerRuntime", "RunStats", "StopAt"]

log = logging.getLogger(__name__)

_CONSUME_BATCH = 10_000
#: librdkafka's read-ahead of the change topics (see :func:`_prefetch`): each option
#: applies unless the Kafka options (``QUEUESTREAM_KAFKA``) set it.
_READ_AHEAD = {
    "queued.max.messages.kbytes": 4_096,  # messages queued, decompressed (default 65536)
    "fetch.max.bytes": 4 * 1024 * 1024,  # one fetch response, compressed
    "max.partition.fetch.bytes": 1024 * 1024,  # of it per partition
}
_CONSUME_TIMEOUT = 0.2
_WAIT_STEP = 0.5  # longest single poll while waiting
_LAG_EVERY = 1.0  # seconds between lag updates (metrics) while the loop turns
_BOUNDED_FETCH_WAIT_MS = 50  # a bounded run's longest fetch at a partition's end


def _prefetch(settings: Settings) -> dict[str, int]:
    """librdkafka's read-ahead of the change topics, bounded: what it fetches ahead is memory.

    With the fetch sizes of :func:`~queuestream.kafka_clients.consumer_config` (32 MB
    a fetch, sized for END markers) and 16 MB queued, a consumer fetched a large
    refresh far ahead of what it applied: measured (``make bench-memory``, 400,000
    rows), its RSS reached 357 MB within two seconds of starting, nearly all of it in
    the glibc arenas of librdkafka's threads, and grew with the refresh (0.7 KB per
    event; the Python side held at most 10,000 events). The refresh arrives as
    lz4-compressed batches of up to a megabyte, which librdkafka decompresses as it
    queues them. With 4 MB fetches and 4 MB queued the peak was 214 MB, and at
    1,000,000 rows it no longer grows with the refresh. A few consume batches ahead
    keep the loop fed, and a record batch larger than the fetch size (an END marker
    of megabytes) still arrives whole: the broker returns the first batch of a fetch
    whatever its size. Each option set in the Kafka options (``QUEUESTREAM_KAFKA``)
    keeps the user's value.
    """
    return {k: v for k, v in _READ_AHEAD.items() if k not in settings.kafka}


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
    tombstones: int = 0  # tombstones read (skipped: they follow deletes, for compaction)
    outages: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


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
        assembler: Assembler | None = None,
    ) -> None:
        """``assembler``: the one to hold refreshes in (a benchmark's, which notes what
        arrives); every part of the runtime shares it."""
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
        history = [settings.schema_history_dir] if settings.schema_history_dir else []
        self.codec = AvroCodec.from_url(
            settings.topic_prefix, settings.schema_registry_url, history
        )
        self.tables = {topic_for(settings.topic_prefix, t): t for t in target.tables}
        self.topics = {t: topic for topic, t in self.tables.items()}
        self.budget = ErrorBudget(settings.max_errors)
        # A rebuild that meets a poison event again writes it again, marked as its own.
        self.dead_letters = DeadLetters(
            settings, target.name, f"{self.group}.rebuild" if stop_at else self.group
        )
        self.assembler = assembler or Assembler()
        self.stats = RunStats()
        store = OffsetStore(target.name, self.group)
        self.ownership = Ownership(
            self.tables,
            self.engine,
            store,
            stops=stop_at.offsets if stop_at else None,
            on_revoke=self._forget,
        )
        self.applier = BatchApplier(
            target,
            self.engine,
            store,
            member=self.member,
            budget=self.budget,
            dead_letters=self._send_dead_letters,
        )
        self.streaming = Streaming(self.assembler, self.ownership, self.applier)
        # Failures of open transactions (rolled back, read again): waited out with backoff.
        self._streaming_outage = Outage("applying a refresh in parts", settings.backoff)
        self._consumer: Consumer | None = None
        self._markers: EndMarkers | None = None
        self._intake: Intake | None = None
        self._idle_since: float | None = None
        self._closing = False  # set once the run closes its clients
        self._lag_observed = -_LAG_EVERY  # monotonic time of the last lag update (metrics)

    # -- the story ------------------------------------------------------------------------
    def run(self) -> RunStats:
        """Apply until stopped (or idle with ``until_idle``, or at a bounded run's stop).

        ``seconds`` is the whole run's, whichever way it ends: a run stopped while it
        waited for its target database or for Kafka has taken that time too.
        """
        started = time.monotonic()
        try:
            self._run()
        finally:
            self.stats.seconds = time.monotonic() - started
        return self.stats

    def _run(self) -> None:
        target = f"the target database {describe_url(self.engine.url)}"
        if not self._retrying(target, lambda: target_db.prepare(self.engine, self.target)):
            return
        # A bounded run's plan (consumers/rebuild.py) has made sure of the topics: another
        # admin client here would only add a connection (50 ms) to the rebuild.
        created: list[str] = []
        if self.stop_at is None and not self._retrying(
            "Kafka", lambda: ensure_topics(self.settings, created=created, stop=self.stop)
        ):
            return
        if batches_topic(self.settings) in created:
            # No producer has written here: a topic prefix mistyped reads nothing, silently.
            log.warning(
                "no producer has published to the topic prefix %r yet (its batches topic did "
                "not exist): its topics were created with %d partitions, and this consumer "
                "waits for events; check topic_prefix if you expected some",
                self.settings.topic_prefix,
                self.settings.partitions,
            )
        self._start_reading()
        try:
            self._loop()
        finally:
            self.streaming.abandon()  # stopped with a refresh applied in part: not committed
            self.stats.tombstones = self.assembler.tombstones_seen
            self._close()

    def _loop(self) -> None:
        """Read, hold refreshes until they are whole, apply them: until stopped or finished."""
        assert self._markers is not None
        while not self.stop.is_set():
            if self.ownership.unresolved and not self._retrying(
                "reading the target's offsets", self.ownership.resolve, counted=False
            ):
                return
            self._read(_CONSUME_TIMEOUT)
            self._markers.poll()
            self._observe()
            if self.streaming.active:
                self._stream()
                continue
            batch = self._ready()
            if batch is not None:
                self._idle_since = None
                self._apply_until_done(batch)
            elif self.streaming.wanted(self._markers.ends):
                self._idle_since = None
                self._stream()
            elif self._finished():
                return

    def _start_reading(self) -> None:
        """Open the END-marker reader and the consumer; join the group (or own all)."""
        until_ms = self.stop_at.until_ms if self.stop_at else None
        self._markers = EndMarkers(self.settings, self.codec, self.group, until_ms=until_ms)
        self._markers.needed = self.assembler.needed_refreshes
        self._intake = Intake(
            self.codec,
            self.tables,
            self.ownership,
            self.assembler,
            self._markers,
            self.target.reads,
        )
        self._consumer = Consumer(
            consumer_config(
                self.settings,
                # A bounded run owns every partition and joins no group (Ownership.own_all).
                f"{self.group}.rebuild" if self.stop_at else self.group,
                **{
                    "enable.partition.eof": True,
                    "partition.assignment.strategy": "range",
                    "client.id": f"queuestream-{self.target.name}-{self.member}",
                    "on_commit": self.ownership.committed,
                    **_prefetch(self.settings),
                    **self._bounded_fetch(),
                },
            )
        )
        if self.stop_at is not None:
            self.ownership.own_all(self._consumer)
        else:
            self.ownership.join(self._consumer)
        log.info(
            "consumer %s of group %s applying %s to %s",
            self.member,
            self.group,
            ", ".join(self.tables),
            describe_url(self.engine.url),
        )

    def _bounded_fetch(self) -> dict[str, int]:
        """A bounded run learns that a partition is read to its stop from the end of the
        partition (its last event is followed by the commit marker, never delivered), and
        librdkafka reports that end after a fetch at it comes back empty: the broker holds
        such a fetch for ``fetch.wait.max.ms`` (500 ms by default). A rebuild reads what
        is there already, so it asks for 50 ms (unless the Kafka options set it)."""
        if self.stop_at is None or "fetch.wait.max.ms" in self.settings.kafka:
            return {}
        return {"fetch.wait.max.ms": _BOUNDED_FETCH_WAIT_MS}

    def _ready(self) -> Batch | None:
        """The next batch that is whole on the partitions this member owns."""
        ends = self._markers.ends if self._markers else {}
        return self.assembler.ready(ends, self.ownership.owned, self.ownership.at_end)

    def _finished(self) -> bool:
        """Nothing to apply now: is this the end of a bounded or an ``until_idle`` run?"""
        if self.stop_at is not None:
            return self._reached_stop()
        if not (self.until_idle and self.ownership.settled and self.assembler.empty):
            self._idle_since = None
            return False
        now = time.monotonic()
        self._idle_since = self._idle_since or now
        if now - self._idle_since < self.settings.idle_seconds:
            return False
        log.info("idle for %.1fs: stopping (--until-idle)", self.settings.idle_seconds)
        return True

    def _reached_stop(self) -> bool:
        """Bounded run: every partition read to its stop and every END marker up to it known."""
        assert self._markers is not None and self.stop_at is not None
        if not self.ownership.settled:
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

    # -- reading ----------------------------------------------------------------------------
    def _read(self, timeout: float) -> None:
        assert self._consumer is not None and self._intake is not None
        for message in consume_arrived(self._consumer, _CONSUME_BATCH, timeout):
            self._intake.take(message)

    def _forget(self, slots: set[Slot]) -> None:
        """Partitions were revoked: drop what was read from them.

        An open transaction cannot commit without them: it is rolled back, and the
        partitions still owned are read again from the target's offsets.
        """
        if self._closing:
            return  # the run is over: a close given up on may still call back, later
        if self.streaming.active:
            self._abandon()
        self.assembler.revoke(slots)
        self._observe(force=True)  # metrics: no lag for partitions no longer owned

    # -- applying in parts ------------------------------------------------------------------
    def _stream(self) -> None:
        """One turn of the open transaction (:mod:`.streaming`): open it, write, or commit.

        A retriable failure (the target or Kafka gone) rolls it back; the partitions are
        read again from the target's offsets after a backoff. Anything else rolls it
        back and stops the consumer.
        """
        assert self._markers is not None
        ends = self._markers.ends
        try:
            if not self.streaming.active:
                self.streaming.start(ends)
            done = self.streaming.turn(ends)
        except RetriableError as exc:
            self._abandon()
            if not self._streaming_outage.ongoing:
                self._outage()
            self._wait(self._streaming_outage.failed(exc))
            return
        except BaseException:
            self._abandon()
            raise
        if done is None:
            return
        applied, batch = done
        self._streaming_outage.succeeded()
        self.ownership.commit(applied.next_offsets)
        self.assembler.done(batch)
        self._report(applied)

    def _abandon(self) -> None:
        """Roll the open transaction back; read every owned partition again from its offset."""
        self.streaming.abandon()
        owned = set(self.ownership.owned)
        self.assembler.revoke(owned)
        self.ownership.rewind(owned)

    # -- applying ---------------------------------------------------------------------------
    def _apply_until_done(self, batch: Batch) -> None:
        """Apply ``batch``; while the target is down, pause every partition and retry."""
        pending = batch

        def wait(seconds: float) -> bool:
            nonlocal pending
            if not self.ownership.paused:
                self._outage()
                self.ownership.pause(True)
            if not self._wait(seconds):
                return False
            # Partitions may have moved meanwhile: apply what is still ours.
            ready = self._ready()
            if ready is None:
                return False
            pending = ready
            return True

        outage = Outage("applying a batch", self.settings.backoff)
        applied = retry(lambda: self.applier.apply(pending), outage, wait, stopped=self.stop.is_set)
        if applied is None:
            if not self.stop.is_set():
                self.ownership.pause(False)  # nothing of ours is left to apply
            return
        self.ownership.commit(applied.next_offsets)
        if self.ownership.paused:
            log.info("the target is back: applied the batch that waited")
            self.ownership.pause(False)
        self.assembler.done(pending)
        self._report(applied)

    def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.dead_letters.publish(letters)
        if self.metrics is not None:
            self.metrics.dead_letters(letters)

    def _report(self, applied: Applied) -> None:
        outcome = applied.outcome
        self.stats.batches += 1
        self.stats.skipped_applied += applied.skipped
        for entry in outcome.entries:
            self.stats.refreshes += entry.is_refresh
            self.stats.rows += entry.rows_applied
            self.stats.stale += entry.events_stale
            self.stats.errors += entry.errors
            for name, n in entry.counts.items():
                self.stats.counts[name] = self.stats.counts.get(name, 0) + n
            log.info(
                "%s: %s (%d stale) in %d ms",
                entry.heading(),
                entry.summary(),
                entry.events_stale,
                entry.duration_ms,
            )
        if self.metrics is not None:
            self.metrics.batch(outcome)
            self._observe(force=True)
        if self.on_batch is not None:
            self.on_batch(outcome)

    # -- waiting through outages ------------------------------------------------------------
    def _retrying(self, what: str, attempt: Callable[[], object], *, counted: bool = True) -> bool:
        """Run ``attempt`` until it succeeds (True) or ``stop`` is set (False).

        ``counted``: a first failure counts as an outage (run figures and metrics).
        """
        if self.stop.is_set():
            return False
        outage = Outage(what, self.settings.backoff)

        def once() -> bool:
            attempt()
            return True

        def wait(seconds: float) -> bool:
            if counted and outage.failures == 1:
                self._outage()
            return self._wait(seconds)

        return retry(once, outage, wait, stopped=self.stop.is_set) is not None

    def _wait(self, seconds: float) -> bool:
        """Wait while serving the Kafka session; False once asked to stop.

        The consumer keeps polling (what it reads is held as usual), so the group
        membership stays alive and rebalance callbacks still run.
        """
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            self._observe()
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._consumer is not None:
                self._read(min(left, _WAIT_STEP))
            else:
                self.stop.wait(min(left, _WAIT_STEP))
        return False

    def _outage(self) -> None:
        """The target (or Kafka) became unreachable: the run waits and retries."""
        self.stats.outages += 1
        if self.metrics is not None:
            self.metrics.outage()

    # -- metrics and closing ----------------------------------------------------------------
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
        self.metrics.observe_lag(self._consumer, self.ownership.reading(), held)

    def _close(self) -> None:
        self._closing = True
        try:
            if self._consumer is not None:
                # Leaves the group at once; bounded, as a commit in flight to a broker
                # gone away would hold it forever.
                close_consumer(self._consumer, f"the consumer of group {self.group}")
        finally:
            if self._markers is not None:
                self._markers.close()
            self.dead_letters.close()
