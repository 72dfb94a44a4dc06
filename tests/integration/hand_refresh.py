"""A refresh with deletes, published by hand the way the producer publishes one.

The consumers' side of deletes is tested before (or without) the producer's: rows
are deleted in the source, and :class:`HandRefresh` publishes what the producer
publishes for them, under the agreed contract: in one Kafka transaction, a BEGIN
marker, the change events (a delete is op ``d`` with ``before`` = the row as last
published and ``after`` null, ``source.ts_ms`` = when the delete was detected, on
the row's key and partition, followed by a tombstone: same key, same partition,
null value), then an END marker whose counts, op counts and partition counts count
the change events and not the tombstones. Upserts (``u``, or ``r`` for a repair)
of rows that changed with the deletes can ride in the same refresh.

It writes under a transactional id of its own, so the producer's watermark (read
from its own END markers) is left alone. The tables the sample targets read have no
masked columns by default, so a row read from the source is the image published.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from producer.ids import new_refresh_id
from producer.partitioning import CustomerPartitioner
from queuestream.batches import BeginMarker, encode_batch_key, encode_marker
from queuestream.batches.markers import now_ms
from queuestream.kafka_clients import batches_topic, change_topics, transactional_producer
from queuestream.sync_schema import source_table
from queuestream.tables import TABLES_BY_NAME, topic_for
from schemas.avro import AvroCodec
from tests.integration.kafka_readback import wait_until_readable
from tests.integration.pipeline import Pipeline

__all__ = ["HandRefresh"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class _Event:
    table: str
    op: str
    row: dict[str, Any]
    customer: int


class HandRefresh:
    """Rows to delete (or upsert) in ``pipeline``'s source, published as one refresh."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings(transactional_id=f"{pipeline.prefix}-by-hand")
        self.codec = AvroCodec(self.settings.topic_prefix)
        self.events: list[_Event] = []

    def delete(self, table: str, where: sa.ColumnElement[bool]) -> list[dict[str, Any]]:
        """Delete the rows ``where`` picks from the source; queue their deletes."""
        rows = self._read(table, where)
        with self.pipeline.source.begin() as conn:
            conn.execute(sa.delete(source_table(table)).where(where))
        self.events.extend(_Event(table, "d", row, customer) for row, customer in rows)
        return [row for row, _ in rows]

    def upsert(self, table: str, where: sa.ColumnElement[bool], op: str = "u") -> None:
        """Queue the rows ``where`` picks as they are now (op ``u``, or ``r``: a repair)."""
        self.events.extend(_Event(table, op, row, c) for row, c in self._read(table, where))

    def _read(self, table: str, where: sa.ColumnElement[bool]) -> list[tuple[dict[str, Any], int]]:
        """(row as an event carries it, its CustomerID) for the rows ``where`` picks."""
        zone = self.settings.zone
        source = source_table(table)
        if "CustomerID" in source.c:
            customer: Any = source.c.CustomerID
            query = sa.select(source, customer.label("_customer")).where(where)
        else:  # order lines: their order's customer
            orders = source_table("orders")
            query = (
                sa.select(source, orders.c.CustomerID.label("_customer"))
                .join(orders, orders.c.OrderID == source.c.OrderID)
                .where(where)
            )
        found = []
        with self.pipeline.source.connect() as conn:
            for record in conn.execute(query):
                row = dict(record._mapping)
                customer_id = row.pop("_customer")
                for name, value in row.items():
                    if isinstance(value, datetime):
                        row[name] = value.replace(tzinfo=zone).astimezone(UTC)
                found.append((row, customer_id))
        return found

    def publish(self) -> str:
        """One transaction: BEGIN, the events (each delete then its tombstone), END."""
        settings, codec = self.settings, self.codec
        refresh_id = new_refresh_id()
        begin = BeginMarker(refresh_id, "watermark")
        partitioner = CustomerPartitioner(settings.partitions)
        published = now_ms()
        source = {
            "version": "0",
            "connector": "queuestream",
            "name": settings.topic_prefix,
            "snapshot": "false",
            "db": "sync",
            "schema": None,
            "system": "exigo",
            "refresh_id": refresh_id,
            "window_start": None,
            "window_end": None,
        }
        counts: Counter[str] = Counter()
        op_counts: Counter[str] = Counter()
        partition_counts: Counter[tuple[str, int]] = Counter()
        producer = transactional_producer(settings)
        producer.init_transactions(_TIMEOUT)
        producer.begin_transaction()
        batches = batches_topic(settings)
        marker_key = encode_batch_key(codec, settings.effective_transactional_id)
        producer.produce(batches, encode_marker(codec, begin), marker_key, 0)
        for total, event in enumerate(self.events, start=1):
            spec = TABLES_BY_NAME[event.table]
            encoder = codec.envelope_encoder(
                event.table, {**source, "table": spec.source}, published, refresh_id
            )
            counts[event.table] += 1
            op_counts[f"{event.table}.{event.op}"] += 1
            partition = partitioner(event.customer)
            partition_counts[(event.table, partition)] += 1
            key = codec.encode(event.table, "key", {k: event.row[k] for k in spec.key})
            topic = topic_for(settings.topic_prefix, event.table)
            if event.op == "d":
                value = encoder.encode_delete(event.row, now_ms(), total, counts[event.table])
            else:
                stamp = (event.row["ModifiedDate"] - _EPOCH) // timedelta(milliseconds=1)
                value = encoder.encode(event.row, event.op, stamp, total, counts[event.table])
            producer.produce(topic, value, key, partition)
            if event.op == "d":
                producer.produce(topic, None, key, partition)  # the tombstone: not counted
        end = begin.end(
            counts=dict(counts), op_counts=dict(op_counts), partition_counts=dict(partition_counts)
        )
        producer.produce(batches, encode_marker(codec, end), marker_key, 0)
        producer.commit_transaction(_TIMEOUT)
        wait_until_readable(self.pipeline.bootstrap, [*change_topics(settings), batches])
        self.events = []
        return refresh_id
