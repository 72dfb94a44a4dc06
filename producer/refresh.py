"""One refresh cycle, and the produce loop.

A refresh freezes the changed rows, publishes BEGIN, every event and END in
one Kafka transaction, and only then takes the END's watermark as its progress.
Whatever fails before the commit leaves the watermark where it was.

The snapshot on the source lives inside the Kafka transaction's body: it is
taken once the broker has answered and released when the last row is read,
before the commit. A broker that fails meanwhile fails the attempt, which
releases the snapshot; the retry (after a pause with nothing open on the
source) takes a fresh one. The watermark has not moved, so nothing is lost.

A row that cannot be encoded goes to its table's dead-letter topic
(``<topic>.dlq``, :mod:`queuestream.dead_letters`) in the same transaction, as
JSON after masking, while the error budget (``max_errors``) lasts; past it, or
without one, the EncodingError fails the attempt and nothing is committed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from producer.events import EventBuilder, RefreshContext
from producer.partitioning import CustomerPartitioner
from producer.progress import read_progress
from producer.publisher import Send, TransactionalPublisher
from producer.sensitive import ColumnPolicy
from producer.source_reader import ChangedRow, SourceReader
from producer.watermark import (
    OverlapFilter,
    Progress,
    Window,
    WindowPlanner,
    change_digest,
)
from queuestream.batches import BeginMarker, TablePartition, encode_batch_key, encode_marker
from queuestream.databases import create_engine
from queuestream.dead_letters import (
    ErrorBudget,
    ErrorContext,
    dlq_topic,
    ensure_dlq_topics,
    error_headers,
)
from queuestream.errors import CommitOutcomeUnknownError, EncodingError, RetriableError
from queuestream.kafka_clients import batches_topic, change_topics, ensure_topics
from queuestream.producer_status import ProducerStatus, ensure_status_topic, status_topic
from queuestream.retry import Outage, retry
from queuestream.settings import Settings
from queuestream.tables import TABLES, TableSpec, topic_for
from schemas.avro import AvroCodec

__all__ = ["RefreshResult", "Refresher", "new_refresh_id"]

log = logging.getLogger(__name__)

#: The rows of one table, read from the snapshot of one refresh.
Rows = Callable[[TableSpec], Iterator[ChangedRow]]


def new_refresh_id() -> str:
    """Sortable and unique: ``20261123T101500123456Z-3f9a1c2b``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


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

    def __init__(self, settings: Settings, engine: sa.Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings.source_url)
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
        self.policy = ColumnPolicy(
            settings.sensitive_columns,
            settings.hash_key.get_secret_value().encode() if settings.hash_key else None,
        )
        self.partitions = ensure_topics(settings)
        ensure_status_topic(settings)
        self.budget = ErrorBudget(settings.max_errors)
        if settings.max_errors:
            ensure_dlq_topics(settings, set(change_topics(settings)))
        self.partitioner = CustomerPartitioner(self.partitions)
        self.publisher = TransactionalPublisher(settings)
        self.progress: Progress = read_progress(settings, self.codec)
        self.overlap = timedelta(seconds=settings.overlap_seconds)
        self.planner = WindowPlanner(timedelta(hours=settings.first_window_hours), self.overlap)
        self._batch_key = encode_batch_key(self.codec, settings.effective_transactional_id)
        self._database = make_url(settings.source_url).database or ""
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

    def report(self, stuck_on: EncodingError | None) -> None:
        """Write this producer's status to the status topic (its own small transaction):
        stuck on the row of ``stuck_on``, or running when None."""
        producer = self.settings.effective_transactional_id
        status = (
            ProducerStatus.running(producer)
            if stuck_on is None
            else ProducerStatus.stuck(producer, stuck_on)
        )
        topic = status_topic(self.settings.topic_prefix)
        key = producer.encode()
        value = status.encode()
        assert self.publisher is not None  # set by _start
        self.publisher.transaction(lambda send: send(topic, key, value, 0))

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        self.engine.dispose()

    # -- watermark mode -----------------------------------------------------------
    def _watermark_cycle(self, since: datetime | None) -> RefreshResult:
        def attempt() -> RefreshResult:
            # The bound first, the snapshot after it (inside the transaction).
            window = self.planner.plan(self.progress, self.reader.safe_end(), since)

            @contextmanager
            def window_rows() -> Iterator[Rows]:
                with self.reader.frozen() as snapshot:
                    yield lambda spec: snapshot.changed_rows(spec, window.read_from, window.end)

            return self._publish(window_rows, window, None)

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
        def queue_rows() -> Iterator[Rows]:
            with self.reader.frozen() as snapshot:
                again, _ = snapshot.queue_fingerprint()
                if again != fingerprint:
                    msg = (
                        "the queue tables changed between their fingerprint and publishing "
                        "(does another process run the refresh statement?); nothing was "
                        "committed, the refresh starts over"
                    )
                    raise RetriableError(msg)
                yield snapshot.queue_rows

        result = self._publish_with_retries(
            lambda: self._publish(queue_rows, None, fingerprint, since)
        )
        result.recovered = recovered
        return result

    # -- publishing -------------------------------------------------------------------
    def _publish_with_retries(self, attempt: Callable[[], RefreshResult]) -> RefreshResult:
        def pause(seconds: float) -> bool:
            time.sleep(seconds)
            return True

        outage = Outage("publishing the refresh", self.settings.backoff)
        result = retry(
            attempt,
            outage,
            pause,
            # Only a new producer can tell what committed: that is the produce loop's work.
            unless=(CommitOutcomeUnknownError,),
            max_attempts=self.settings.publish_attempts,
        )
        assert result is not None  # pause never stops
        return result

    def _publish(
        self,
        open_rows: Callable[[], AbstractContextManager[Rows]],
        window: Window | None,
        fingerprint: str | None,
        since: datetime | None = None,
    ) -> RefreshResult:
        """``open_rows`` takes the snapshot, inside the transaction, and releases it once the
        rows are read. ``since``: procedure mode's start-date override (watermark mode:
        ``window``)."""
        started = time.monotonic()
        mode = self.settings.refresh_mode
        context = RefreshContext(
            refresh_id=new_refresh_id(),
            prefix=self.settings.topic_prefix,
            database=self._database,
            window_start=window.start if window else None,
            window_end=window.end if window else None,
            resync=bool(window.resync if window else since),
        )
        result = RefreshResult(context.refresh_id, mode, context.window_start, context.window_end)
        overlap = OverlapFilter.for_window(window, self.progress, self.overlap) if window else None
        ops: Counter[str] = Counter()
        placed: Counter[TablePartition] = Counter()
        refused: Counter[str] = Counter()
        producer_id = self.settings.effective_transactional_id
        batches = batches_topic(self.settings)
        zone = self.settings.zone
        prefix = self.settings.topic_prefix

        def body(send: Send) -> None:
            begin = BeginMarker(
                context.refresh_id,
                mode,
                context.window_start,
                context.window_end,
                since_override=window.since_override if window else since,
            )
            send(batches, self._batch_key, encode_marker(self.codec, begin), 0)
            total = 0
            with open_rows() as rows:
                for spec in TABLES:
                    builder = EventBuilder(
                        spec, context, self.codec, self.policy, self.partitioner, zone
                    )
                    topic = topic_for(prefix, spec.name)
                    for changed in rows(spec):
                        if overlap is not None:
                            version = changed.row["ModifiedDate"].replace(tzinfo=zone)
                            if overlap.needs_digest(version):
                                key = tuple(changed.row[k] for k in spec.key)
                                digest = change_digest(spec.name, key, version)
                                if not overlap.admit(digest, version):
                                    continue
                        try:
                            event = builder.build(changed, total + 1)
                        except EncodingError as exc:
                            if not self.budget.fits(refused.total() + 1):
                                raise
                            refused[spec.name] += 1
                            where = ErrorContext(
                                topic=topic,
                                partition=-1,
                                offset=-1,
                                timestamp_ms=int(time.time() * 1000),
                                stage="produce",
                                by={"producer": producer_id, "refresh_id": context.refresh_id},
                                connector=producer_id,
                            )
                            dead_key, dead_value = builder.unencodable(changed)
                            headers = error_headers(exc, where)
                            send(dlq_topic(topic), dead_key, dead_value, 0, headers)
                            continue
                        total += 1
                        send(topic, event.key, event.value, event.partition)
                        ops[f"{spec.name}.{event.op}"] += 1
                        placed[(spec.name, event.partition)] += 1
                    result.counts[spec.name] = builder.count
            result.op_counts = dict(ops)
            result.partition_counts = dict(placed)
            result.overlap_skipped = overlap.skipped if overlap else 0
            end = begin.end(
                counts=result.counts,
                op_counts=result.op_counts,
                partition_counts=result.partition_counts,
                snapshot_fingerprint=fingerprint,
                overlap_seen=overlap.packed() if overlap else None,
            )
            send(batches, self._batch_key, encode_marker(self.codec, end), 0)

        assert self.publisher is not None  # set by _start
        self.publisher.transaction(body)
        # Committed: only now does the progress move, and the dead letters count.
        result.dead_letters = dict(refused)
        self.budget.spend(refused.total())
        if refused:
            log.warning(
                "refresh %s sent %d rows that cannot be encoded to dead-letter topics (%s); "
                "%d of the error budget of %d left. Their reasons are in the headers "
                "(queuestream.errors.*); a row is published again once it changes in the source",
                context.refresh_id,
                refused.total(),
                ", ".join(f"{dlq_topic(topic_for(prefix, t))} {n}" for t, n in refused.items()),
                self.budget.max_errors - self.budget.spent,
                self.budget.max_errors,
            )
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
