"""One batch inside one Kafka transaction: BEGIN, the events, what goes with them, END.

A refresh (:mod:`producer.refresh`) and a sweep step (:mod:`producer.sweep`) both
publish batches. Whatever a batch publishes goes through a :class:`BatchWriter`,
so that each event is accompanied, in the same transaction, by what must commit
with it:

* a change event (``c``, ``u``, ``r``) writes the row to the state changelog
  (:mod:`producer.state_changelog`) and to the open transaction of the local
  state (:mod:`producer.published_state`);
* a delete (``d``) is followed by its tombstone (same key and partition, null
  value) and removes the row from both;
* a row that cannot be encoded goes to ``<topic>.dlq`` while the error budget
  lasts (:mod:`queuestream.dead_letters`), otherwise the EncodingError fails
  the batch;
* the END marker counts the change events (tombstones and dead letters aside)
  per table, per ``<table>.<op>`` and per partition, which is what consumers
  wait for.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from producer.changed_rows import ChangedRow
from producer.events import EventBuilder, PreparedRow, RefreshContext, RefusedRow
from producer.partitioning import CustomerPartitioner
from producer.published_state import PublishedState
from producer.publisher import Send, TransactionalPublisher
from producer.sensitive import ColumnPolicy
from producer.state_changelog import (
    Key,
    Published,
    pack,
    packed_key,
    record_key,
    record_key_format,
    state_topic,
)
from queuestream.batches import BeginMarker, EndMarker, TablePartition, encode_marker
from queuestream.dead_letters import ErrorBudget, ErrorContext, dlq_topic, error_headers
from queuestream.errors import EncodingError
from queuestream.tables import TABLES, TableSpec, topic_for
from schemas.avro import AvroCodec

__all__ = ["BatchParts", "BatchWriter"]

log = logging.getLogger(__name__)


class BatchParts:
    """What every batch of one producer shares: codec, policy, partitioner, state, budget."""

    def __init__(
        self,
        *,
        codec: AvroCodec,
        policy: ColumnPolicy,
        partitioner: CustomerPartitioner,
        zone: ZoneInfo,
        prefix: str,
        producer_id: str,
        batch_key: bytes,
        batches_topic: str,
        state: PublishedState,
        budget: ErrorBudget,
    ) -> None:
        self.codec = codec
        self.policy = policy
        self.partitioner = partitioner
        self.zone = zone
        self.prefix = prefix
        self.producer_id = producer_id
        self.batch_key = batch_key
        self.batches_topic = batches_topic
        self.state = state
        self.budget = budget
        self.state_topic = state_topic(prefix)
        self.topics = {spec.name: topic_for(prefix, spec.name) for spec in TABLES}

    def publish(
        self,
        publisher: TransactionalPublisher,
        context: RefreshContext,
        body: Callable[[BatchWriter], None],
    ) -> BatchWriter:
        """Run ``body`` with a writer inside one Kafka transaction; the local state's
        changes commit after it, or roll back with it. Returns the writer (its counts)."""
        written: list[BatchWriter] = []

        def run(send: Send) -> None:
            writer = BatchWriter(self, context, send)
            written[:] = [writer]
            body(writer)

        self.state.begin()
        try:
            publisher.transaction(run)
        except BaseException:
            self.state.rollback()
            raise
        self.state.commit(context.refresh_id)
        [writer] = written
        refused = writer.refused
        self.budget.spend(refused.total())
        if refused:
            log.warning(
                "batch %s sent %d rows that cannot be encoded to dead-letter topics (%s); "
                "%d of the error budget of %d left. Their reasons are in the headers "
                "(queuestream.errors.*); a row is published again once it changes in the source",
                context.refresh_id,
                refused.total(),
                ", ".join(f"{dlq_topic(self.topics[t])} {n}" for t, n in refused.items()),
                self.budget.max_errors - self.budget.spent,
                self.budget.max_errors,
            )
        return writer

    def builder(self, spec: TableSpec, context: RefreshContext) -> EventBuilder:
        """The event builder of ``spec`` for one batch."""
        return EventBuilder(spec, context, self.codec, self.policy, self.partitioner, self.zone)


class BatchWriter:
    """Writes one batch through ``send`` (the transaction's); counts what it wrote."""

    def __init__(self, parts: BatchParts, context: RefreshContext, send: Send) -> None:
        self.parts = parts
        self.context = context
        self.send = send
        self.total = 0
        #: Change events per (table, op, partition): one count per event, the rest derived.
        self._events: dict[tuple[str, str, int], int] = {}
        self.refused: Counter[str] = Counter()
        self._builders: dict[str, EventBuilder] = {}

    def builder(self, spec: TableSpec) -> EventBuilder:
        found = self._builders.get(spec.name)
        if found is None:
            found = self._builders[spec.name] = self.parts.builder(spec, self.context)
        return found

    def begin(self, marker: BeginMarker) -> None:
        parts = self.parts
        self.send(parts.batches_topic, parts.batch_key, encode_marker(parts.codec, marker), 0)

    def upsert(self, spec: TableSpec, changed: ChangedRow, op: str | None = None) -> bool:
        """Publish a changed row (``op`` as the window says, unless given). False: the row
        could not be encoded and went to the dead-letter topic."""
        return self.publish(spec, self.builder(spec).preparer.prepare(changed, op))

    def prepared(
        self, spec: TableSpec, rows: Iterable[ChangedRow]
    ) -> Iterator[PreparedRow | RefusedRow]:
        """``rows`` prepared here, for :meth:`publish` (the row reader prepares its own)."""
        prepare = self.builder(spec).preparer.prepare
        for changed in rows:
            yield prepare(changed)

    def publish(self, spec: TableSpec, prepared: PreparedRow | RefusedRow) -> bool:
        """Publish a prepared row, at its place in the batch; a refused one goes to the
        dead-letter topic while the budget lasts (False)."""
        self.publish_all(spec, (prepared,))
        return not isinstance(prepared, RefusedRow)

    def publish_all(
        self, spec: TableSpec, rows: Sequence[PreparedRow | RefusedRow]
    ) -> list[tuple[int, int, int, bytes]]:
        """:meth:`publish` each of ``rows`` in order (a chunk of them: one loop, with what
        it needs at hand, for a refresh's hundreds of thousands of rows). Returns what it
        wrote into the local state: (packed key (:func:`packed_key`), version, customer,
        row) of each row published, the refused ones left out."""
        name = spec.name
        finish = self.builder(spec).finish
        topic = self.parts.topics[name]
        state_topic = self.parts.state_topic
        state_key = record_key_format(name)
        send = self.send
        events = self._events
        written: list[tuple[int, int, int, bytes]] = []  # the local state's, for the chunk
        for prepared in rows:
            if isinstance(prepared, RefusedRow):
                self._dead_letter(topic, prepared, prepared.error(name))
                continue
            self.total += 1
            event_key, row, op, version, partition, key, customer = prepared
            send(topic, event_key, finish(prepared, self.total), partition)
            counted = (name, op, partition)
            events[counted] = events.get(counted, 0) + 1
            send(state_topic, state_key % key, pack(version, customer, row), 0)
            written.append((packed_key(key), version, customer, row))
        self.parts.state.put_rows(name, written)
        return written

    def delete(self, spec: TableSpec, key: Key, published: Published) -> None:
        """Publish the delete of a row the state holds, and its tombstone."""
        builder = self.builder(spec)
        topic = self.parts.topics[spec.name]
        self.total += 1
        event = builder.delete(key, published, self.total)
        self.send(topic, event.key, event.value, event.partition)
        self.send(topic, event.key, None, event.partition)  # the tombstone
        self._count(spec.name, "d", event.partition)
        self.send(self.parts.state_topic, record_key(spec.name, key), None, 0)
        self.parts.state.delete(spec.name, key)

    def state_record(self, key: bytes, value: bytes) -> None:
        """Another record of the state changelog (the sweep's position) in this batch."""
        self.send(self.parts.state_topic, key, value, 0)

    def end(
        self, begin: BeginMarker, *, extra_counts: dict[str, int] | None = None, **more: Any
    ) -> EndMarker:
        """Send the END marker counting what was written (``extra_counts`` join
        ``op_counts``: the sweep's findings)."""
        parts = self.parts
        end = begin.end(
            counts=self.table_counts(),
            op_counts={**self.ops, **(extra_counts or {})},
            partition_counts=dict(self.placed),
            **more,
        )
        self.send(parts.batches_topic, parts.batch_key, encode_marker(parts.codec, end), 0)
        return end

    def table_counts(self) -> dict[str, int]:
        """Change events per table, every table named (0 when none)."""
        counts = self.counts
        return {spec.name: counts[spec.name] for spec in TABLES}

    def _count(self, table: str, op: str, partition: int) -> None:
        counted = (table, op, partition)
        self._events[counted] = self._events.get(counted, 0) + 1

    @property
    def counts(self) -> Counter[str]:
        """Change events per table."""
        found: Counter[str] = Counter()
        for (table, _op, _partition), n in self._events.items():
            found[table] += n
        return found

    @property
    def ops(self) -> Counter[str]:
        """Change events per ``<table>.<op>``."""
        found: Counter[str] = Counter()
        for (table, op, _partition), n in self._events.items():
            found[f"{table}.{op}"] += n
        return found

    @property
    def placed(self) -> Counter[TablePartition]:
        """Change events per (table, partition)."""
        found: Counter[TablePartition] = Counter()
        for (table, _op, partition), n in self._events.items():
            found[(table, partition)] += n
        return found

    def _dead_letter(self, topic: str, refused: RefusedRow, error: EncodingError) -> None:
        parts = self.parts
        if not parts.budget.fits(self.refused.total() + 1):
            raise error
        self.refused[error.table] += 1
        where = ErrorContext(
            topic=topic,
            partition=-1,
            offset=-1,
            timestamp_ms=int(time.time() * 1000),
            stage="produce",
            by={"producer": parts.producer_id, "refresh_id": self.context.refresh_id},
            connector=parts.producer_id,
        )
        self.send(dlq_topic(topic), refused.key, refused.value, 0, error_headers(error, where))
