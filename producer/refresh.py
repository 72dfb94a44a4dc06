"""One refresh cycle (the loop around it is :mod:`producer.produce_loop`).

A refresh freezes the changed rows, publishes BEGIN, every event and END in
one Kafka transaction, and only then takes the END's watermark as its progress.
Whatever fails before the commit leaves the watermark where it was.

The snapshot on the source lives inside the Kafka transaction's body: it is
taken once the broker has answered and released when the last row is read,
before the commit. A broker that fails meanwhile fails the attempt, which
releases the snapshot; the retry (after a pause with nothing open on the
source) takes a fresh one. The watermark has not moved, so nothing is lost.

What goes into the transaction with each event is :mod:`producer.batch_writer`'s:
the row's record in the state changelog (what was published, which the deletes
are found against), and for a row that cannot be encoded its dead letter while
the error budget (``max_errors``) lasts; past it, or without one, the
EncodingError fails the attempt and nothing is committed. An order's lines that
the state holds but the source no longer has are deleted in the refresh that
carries the order (``CHILDREN``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from producer.batch_writer import BatchParts, BatchWriter
from producer.changed_rows import ChangedRow
from producer.events import STATE_KEY, PreparedRow, RefreshContext, RefusedRow
from producer.ids import new_refresh_id
from producer.partitioning import CustomerPartitioner
from producer.progress import read_progress
from producer.published_state import PublishedState
from producer.publisher import TransactionalPublisher
from producer.row_process import CHUNK, ReaderJob, RowReader
from producer.sensitive import column_policy
from producer.source_names import source_database, source_schema
from producer.source_reader import SourceReader
from producer.state_changelog import Key, state_topic
from producer.watermark import (
    DigestMemo,
    OverlapFilter,
    Progress,
    Window,
    WindowPlanner,
)
from producer.window_rows import window_rows
from queuestream.batches import BeginMarker, TablePartition, encode_batch_key
from queuestream.databases import create_engine
from queuestream.dead_letters import (
    ErrorBudget,
    ensure_dlq_topics,
)
from queuestream.errors import CommitOutcomeUnknownError, EncodingError, RetriableError
from queuestream.kafka_clients import batches_topic, change_topics, ensure_topics
from queuestream.producer_status import ProducerStatus, status_topic
from queuestream.retry import Outage, retry
from queuestream.settings import Settings
from queuestream.tables import TABLES, TableSpec
from schemas.avro import AvroCodec

__all__ = ["RefreshResult", "Refresher"]

log = logging.getLogger(__name__)

#: The rows of one table, read from the snapshot of one refresh.
Rows = Callable[[TableSpec], Iterator[ChangedRow]]

#: Tables whose rows belong to a row of another, keyed by it first: when the parent
#: is in a refresh, the children the state holds but the source lacks are deleted.
CHILDREN = {"order_details": "orders"}


class RefreshSource(Protocol):
    """What a refresh reads inside its snapshot: the changed rows, prepared for
    ``BatchWriter.publish_all`` a chunk at a time, and the keys of an order's lines as
    they are now (to find the lines that were removed)."""

    #: The rows come from the snapshot ``keys_under`` reads (watermark mode), so a line
    #: this refresh publishes is one the source has: only the others need asking about.
    @property
    def rows_in_snapshot(self) -> bool: ...

    def chunks(
        self, spec: TableSpec, writer: BatchWriter
    ) -> Iterator[Sequence[PreparedRow | RefusedRow]]: ...

    def keys_under(self, spec: TableSpec, parents: set[int]) -> set[Key]: ...


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A :class:`RefreshSource` read and prepared in this process (``reader_process``
    off; the reader's own is :class:`producer.row_process.ReaderSource`)."""

    rows: Rows
    keys_under: Callable[[TableSpec, set[int]], set[Key]]
    rows_in_snapshot: bool = False

    def chunks(
        self, spec: TableSpec, writer: BatchWriter
    ) -> Iterator[Sequence[PreparedRow | RefusedRow]]:
        prepared = writer.prepared(spec, self.rows(spec))
        while chunk := list(itertools.islice(prepared, CHUNK)):
            yield chunk


@dataclass
class RefreshResult:
    refresh_id: str
    mode: str
    window_start: datetime | None
    window_end: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    partition_counts: dict[TablePartition, int] = field(default_factory=dict)
    overlap_skipped: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)  # table -> rows sent to .dlq
    recovered: bool = False
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "refresh_id": self.refresh_id,
            "mode": self.mode,
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "window_end": self.window_end.isoformat() if self.window_end else None,
            "events": self.events,
            "counts": self.counts,
            "op_counts": self.op_counts,
            "overlap_skipped": self.overlap_skipped,
            "dead_letters": self.dead_letters,
            "recovered": self.recovered,
            "seconds": round(self.seconds, 3),
        }


class Refresher:
    """Publishes refreshes of one sync database to one topic prefix."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop`` (``produce``'s SIGTERM): once set, waits for a broker that is down end
        at once, and a refresh that cannot commit is not tried again (RetriableError)."""
        self.settings = settings
        self.stop = stop
        self.engine = engine or create_engine(settings.source_url, existing="the sync database")
        self.publisher: TransactionalPublisher | None = None
        try:
            self._start(settings)
        except BaseException:
            self.close()
            raise

    def _start(self, settings: Settings) -> None:
        self.reader = SourceReader(self.engine, settings)
        self.reader.check_schema()
        self.codec = AvroCodec.from_url(settings.topic_prefix, settings.schema_registry_url)
        self.policy = column_policy(settings)
        prefix = settings.topic_prefix
        self.partitions = ensure_topics(
            settings, internal=(status_topic(prefix), state_topic(prefix)), stop=self.stop
        )
        if self.partitions != settings.partitions:  # topics another process made first
            log.warning(
                "the change topics %s.* have %d partitions, and events are placed by them; "
                "the partitions setting (%d) applies only to topics this producer creates",
                prefix,
                self.partitions,
                settings.partitions,
            )
        self.budget = ErrorBudget(settings.max_errors)
        if settings.max_errors:
            ensure_dlq_topics(settings, set(change_topics(settings)))
        # Started before the rest, so that it is up by the first refresh.
        self.row_reader = RowReader(settings, self.partitions) if settings.reader_process else None
        self.publisher = TransactionalPublisher(settings, stop=self.stop)
        # After init_transactions (in the publisher): nothing of ours is left open.
        self.progress: Progress = read_progress(settings, self.codec)
        self.state = PublishedState.open(settings, self.progress.refresh_id)
        if self.row_reader is not None:
            self.row_reader.wait_ready()  # started meanwhile
        self.overlap = timedelta(seconds=settings.overlap_seconds)
        self.planner = WindowPlanner(timedelta(hours=settings.first_window_hours), self.overlap)
        self.digests = DigestMemo(settings.zone)  # when this process reads the rows
        self.parts = BatchParts(
            codec=self.codec,
            policy=self.policy,
            partitioner=CustomerPartitioner(self.partitions),
            zone=settings.zone,
            prefix=settings.topic_prefix,
            producer_id=settings.effective_transactional_id,
            batch_key=encode_batch_key(self.codec, settings.effective_transactional_id),
            batches_topic=batches_topic(settings),
            state=self.state,
            budget=self.budget,
        )
        self.database = source_database(settings.source_url)
        self.schema = source_schema(self.engine)
        year = datetime.now(UTC).year
        if (
            datetime(year, 1, 1, tzinfo=settings.zone).utcoffset()
            != datetime(year, 7, 1, tzinfo=settings.zone).utcoffset()
        ):
            log.warning(
                "source_timezone %s observes daylight saving time: changes stamped in the "
                "repeated hour when clocks go back can be missed or published twice; have "
                "the source stamp UTC where possible",
                settings.source_timezone,
            )
        log.info(
            "producer %s ready: watermark %s, %d partitions",
            settings.effective_transactional_id,
            self.progress.watermark.isoformat()
            if self.progress.watermark
            else "none (first refresh)",
            self.partitions,
        )

    # -- public -------------------------------------------------------------------
    def refresh(self, since: datetime | None = None) -> list[RefreshResult]:
        """One cycle. Procedure mode may first republish a snapshot a crash left unpublished."""
        if self.settings.refresh_mode == "procedure":
            return self._procedure_cycle(since)
        return [self._watermark_cycle(since)]

    def report(self, stuck_on: EncodingError | None, sweep: dict[str, Any] | None = None) -> None:
        """Write this producer's status to the status topic (its own small transaction):
        stuck on the row of ``stuck_on``, or running when None; ``sweep``: the last pass."""
        producer = self.settings.effective_transactional_id
        status = (
            ProducerStatus.running(producer, sweep)
            if stuck_on is None
            else ProducerStatus.stuck(producer, stuck_on, sweep)
        )
        topic = status_topic(self.settings.topic_prefix)
        key = producer.encode()
        value = status.encode()
        assert self.publisher is not None  # set by _start
        self.publisher.transaction(lambda send: send(topic, key, value, 0))

    def close(self) -> None:
        row_reader: RowReader | None = getattr(self, "row_reader", None)
        if row_reader is not None:
            row_reader.close()
        if self.publisher is not None:
            self.publisher.close()
        state: PublishedState | None = getattr(self, "state", None)
        if state is not None:
            state.close()
        self.engine.dispose()

    # -- watermark mode -----------------------------------------------------------
    def _watermark_cycle(self, since: datetime | None) -> RefreshResult:
        def attempt() -> RefreshResult:
            # The bound first, the snapshot after it (inside the transaction).
            window = self.planner.plan(self.progress, self.reader.safe_end(), since)

            zone = self.settings.zone

            @contextmanager
            def window_source(overlap: OverlapFilter | None) -> Iterator[RefreshSource]:
                assert overlap is not None  # a window has its overlap
                if self.row_reader is not None:
                    job = ReaderJob(window, overlap, resync=window.resync)
                    with self.row_reader.snapshot(job) as source:
                        yield source
                    return
                self.digests.next_refresh()
                with self.reader.frozen() as snapshot:
                    yield LocalSource(
                        lambda spec: window_rows(
                            snapshot, spec, window, overlap, zone, self.digests
                        ),
                        snapshot.keys_under,
                        rows_in_snapshot=True,
                    )

            return self._publish(window_source, window, None)

        return self._publish_with_retries(attempt)

    # -- procedure mode -------------------------------------------------------------
    def _procedure_cycle(self, since: datetime | None) -> list[RefreshResult]:
        results = []
        pending = self._publish_queue_tables(recovered=True)
        if pending is not None:
            log.warning(
                "republished refresh %s: the queue tables held a snapshot that was never "
                "committed to Kafka (a crash before publishing finished)",
                pending.refresh_id,
            )
            results.append(pending)
        self.reader.run_refresh_statement(since)
        fresh = self._publish_queue_tables(recovered=False, since=since)
        if fresh is not None:
            results.append(fresh)
        return results

    def _publish_queue_tables(
        self, recovered: bool, since: datetime | None = None
    ) -> RefreshResult | None:
        with self.reader.frozen() as snapshot:
            fingerprint, count = snapshot.queue_fingerprint()
        if count == 0 or fingerprint == self.progress.snapshot_fingerprint:
            return None

        # A snapshot of its own for publishing (the one above is released, so that no
        # snapshot waits on Kafka). The END marker carries the fingerprint, so the rows
        # published must be the ones it describes: checked again inside this snapshot.
        @contextmanager
        def queue_rows(_overlap: OverlapFilter | None) -> Iterator[RefreshSource]:
            if self.row_reader is not None:
                job = ReaderJob(fingerprint=fingerprint, resync=since is not None)
                with self.row_reader.snapshot(job) as source:
                    yield source
                return
            with self.reader.frozen() as snapshot:
                snapshot.check_fingerprint(fingerprint)
                yield LocalSource(snapshot.queue_rows, snapshot.keys_under)

        result = self._publish_with_retries(
            lambda: self._publish(queue_rows, None, fingerprint, since)
        )
        result.recovered = recovered
        return result

    # -- publishing -------------------------------------------------------------------
    def _publish_with_retries(self, attempt: Callable[[], RefreshResult]) -> RefreshResult:
        def pause(seconds: float) -> bool:
            if self.stop is None:
                time.sleep(seconds)
                return True
            return not self.stop.wait(seconds)

        outage = Outage("publishing the refresh", self.settings.backoff)
        result = retry(
            attempt,
            outage,
            pause,
            # Only a new producer can tell what committed: that is the produce loop's work.
            unless=(CommitOutcomeUnknownError,),
            max_attempts=self.settings.publish_attempts,
            stopped=None if self.stop is None else self.stop.is_set,
        )
        if result is None:  # stopped
            msg = (
                "stopped before the refresh could be published: nothing was committed and "
                "the watermark did not move"
            )
            raise RetriableError(msg)
        return result

    def _publish(
        self,
        open_source: Callable[[OverlapFilter | None], AbstractContextManager[RefreshSource]],
        window: Window | None,
        fingerprint: str | None,
        since: datetime | None = None,
    ) -> RefreshResult:
        """``open_source`` takes the snapshot, inside the transaction, and releases it once
        the rows are read; given the window's overlap filter, its rows leave out what
        the last refresh published (:mod:`producer.window_rows`). ``since``: procedure
        mode's start-date override (watermark mode: ``window``)."""
        started = time.monotonic()
        context = RefreshContext(
            refresh_id=new_refresh_id(),
            prefix=self.settings.topic_prefix,
            database=self.database,
            schema=self.schema,
            window_start=window.start if window else None,
            window_end=window.end if window else None,
            resync=bool(window.resync if window else since),
        )
        result = RefreshResult(
            context.refresh_id, self.settings.refresh_mode, context.window_start, context.window_end
        )
        overlap = OverlapFilter.for_window(window, self.progress, self.overlap) if window else None

        def body(writer: BatchWriter) -> None:
            begin = BeginMarker(
                context.refresh_id,
                self.settings.refresh_mode,
                context.window_start,
                context.window_end,
                since_override=window.since_override if window else since,
            )
            writer.begin(begin)
            parents: dict[str, set[int]] = {parent: set() for parent in CHILDREN.values()}
            # The keys of the lines this refresh published (with rows from the snapshot),
            # as the writer wrote them into the state: not those refused (dead letters),
            # which the source still has. Packed: a third of the memory of tuples.
            sent: dict[str, set[int]] = {child: set() for child in CHILDREN}
            with open_source(overlap) as source:
                for spec in TABLES:
                    name = spec.name
                    # the overlap's duplicates left out; prepared here or by the row reader
                    for chunk in source.chunks(spec, writer):
                        written = writer.publish_all(spec, chunk)
                        # (a row refused for a key that is no integer has no state key)
                        if name in parents:
                            parents[name].update([p[STATE_KEY][0] for p in chunk if p[STATE_KEY]])
                        elif name in CHILDREN:
                            parents[CHILDREN[name]].update(
                                [p[STATE_KEY][0] for p in chunk if p[STATE_KEY]]
                            )
                            if source.rows_in_snapshot:
                                sent[name].update([w[0] for w in written])
                    if spec.name in CHILDREN:
                        self._delete_removed_children(
                            writer, spec, parents[CHILDREN[spec.name]], source, sent[spec.name]
                        )
            result.overlap_skipped = overlap.skipped if overlap else 0
            writer.end(
                begin,
                snapshot_fingerprint=fingerprint,
                overlap_seen=overlap.packed() if overlap else None,
            )

        assert self.publisher is not None  # set by _start
        writer = self.parts.publish(self.publisher, context, body)
        # Committed: only now do the progress and the state move.
        result.counts = writer.table_counts()
        result.op_counts = dict(writer.ops)
        result.partition_counts = dict(writer.placed)
        result.dead_letters = dict(writer.refused)
        self.progress = Progress(
            refresh_id=context.refresh_id,
            watermark=window.end if window else self.progress.watermark,
            overlap_seen=frozenset(overlap.recorded) if overlap else self.progress.overlap_seen,
            snapshot_fingerprint=fingerprint or self.progress.snapshot_fingerprint,
        )
        result.seconds = time.monotonic() - started
        log.info(
            "refresh %s committed: %d events (%s)%s in %.2fs, watermark %s",
            result.refresh_id,
            result.events,
            ", ".join(f"{t} {n}" for t, n in result.counts.items() if n) or "no changes",
            f", {result.overlap_skipped} overlap duplicates skipped"
            if result.overlap_skipped
            else "",
            result.seconds,
            result.window_end.isoformat() if result.window_end else "n/a",
        )
        return result

    def _delete_removed_children(
        self,
        writer: BatchWriter,
        spec: TableSpec,
        parents: set[int],
        source: RefreshSource,
        sent: set[int],
    ) -> None:
        """Delete the rows of ``spec`` (an order's lines) that the state holds for the
        ``parents`` in this refresh but the source no longer has.

        The lines in ``sent`` (packed keys) were read from the snapshot just now,
        so the source has them, and written into the state; the source is asked only
        about the parents of the other lines held (a refused line the state held from
        before among them: the source has it, so it stays).
        """
        if not parents:
            return
        held = self.state.children_keys(spec.name, parents, sent)
        if not held:
            return
        present = source.keys_under(spec, {key[0] for key in held})
        gone = sorted(held - present)
        if not gone:
            return
        published = self.state.get(spec.name, gone)
        for key in gone:
            writer.delete(spec, key, published[key])
