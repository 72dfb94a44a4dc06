"""Turning a changed row into a Debezium-shaped change event (key, value, partition).

The value is ``{before, after, source, op, ts_ms, transaction}``; ``after`` is
the row after sensitive columns were handled. The queue snapshot holds the row
as it is now, so ``before`` is null; ``op`` is ``c`` when the row was created
inside the window, ``u`` otherwise, and ``r`` for a re-sync from a start date or
a row the sweep found missed or changed. A delete (op ``d``) has ``before``, the
row as last published (kept in :mod:`producer.published_state`), and ``after``
null; its ``source.ts_ms`` is when the delete was found.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from producer.partitioning import CustomerPartitioner
from producer.sensitive import ColumnPolicy
from producer.source_reader import ChangedRow
from producer.state_changelog import Key, Published
from queuestream import __version__
from queuestream.errors import EncodingError
from queuestream.tables import TableSpec
from schemas.avro import AvroCodec
from schemas.avro.record_writer import wall_micros

__all__ = ["EncodedEvent", "EventBuilder", "RefreshContext", "row_key", "version_micros"]


@dataclass(frozen=True, slots=True)
class RefreshContext:
    refresh_id: str
    prefix: str
    database: str
    schema: str
    window_start: datetime | None
    window_end: datetime | None
    resync: bool


@dataclass(slots=True)
class EncodedEvent:
    key: bytes
    value: bytes
    partition: int
    op: str
    version: int  # ModifiedDate, microseconds since the epoch
    row: bytes  # the row's Avro bytes (``after``, or ``before`` of a delete)


def version_micros(moment: datetime) -> int:
    """An aware datetime as microseconds since the epoch (the state's versions)."""
    return wall_micros(moment, UTC)


def row_key(spec: TableSpec, row: dict[str, Any]) -> Key:
    """The state's key of a source row: its key columns, the second 0 when there is one."""
    key = spec.key
    if len(key) == 1:
        return (int(row[key[0]]), 0)
    return (int(row[key[0]]), int(row[key[1]]))


class EventBuilder:
    """Builds and encodes the events of one table within one refresh."""

    def __init__(
        self,
        spec: TableSpec,
        context: RefreshContext,
        codec: AvroCodec,
        policy: ColumnPolicy,
        partitioner: CustomerPartitioner,
        zone: ZoneInfo,
    ) -> None:
        self.spec = spec
        self.context = context
        self.partitioner = partitioner
        self.zone = zone
        self._encode_key = codec.encoder(spec.name, "key")
        self._sensitive: Callable[[dict[str, Any]], None] | None = policy.for_table(spec.name)
        self._key_columns = spec.key
        self._resync = context.resync
        start = context.window_start
        self._window_start_us = None if start is None else version_micros(start)
        source = {
            "version": __version__,
            "connector": "queuestream",
            "name": context.prefix,
            "snapshot": "true" if context.resync else "false",
            "db": context.database,
            "schema": context.schema,
            "table": spec.source,
            "system": "exigo",
            "refresh_id": context.refresh_id,
            "window_start": context.window_start,
            "window_end": context.window_end,
        }
        published_ms = int(datetime.now(UTC).timestamp() * 1000)
        self._envelope = codec.envelope_encoder(
            spec.name, source, published_ms, context.refresh_id, wall_zone=zone
        )
        self.count = 0

    def build(self, changed: ChangedRow, total_order: int, op: str | None = None) -> EncodedEvent:
        """The event of a changed row; ``op`` overrides the op the window gives (the
        sweep's ``r``). The row's timestamps are read as the source's wall times (naive,
        in the source zone) or aware; the row itself is left as it is but for masking."""
        row = changed.row
        zone = self.zone
        micros = wall_micros(row["ModifiedDate"], zone)
        key_values = {k: row[k] for k in self._key_columns}
        if op is None:
            if self._resync:
                op = "r"
            elif (
                self._window_start_us is not None
                and wall_micros(row["CreatedDate"], zone) >= self._window_start_us
            ):
                op = "c"
            else:
                op = "u"
        # Masked before anything can fail: a row that cannot be encoded goes to a
        # dead-letter topic as it is here (key columns are never masked).
        if self._sensitive is not None:
            self._sensitive(row)
        try:
            key = self._encode_key(key_values)
        except EncodingError as exc:
            raise EncodingError(
                exc.reason, table=self.spec.name, key=key_values, column=exc.column
            ) from exc
        self.count += 1
        try:
            row_bytes = self._envelope.encode_row(row)
        except EncodingError as exc:
            self.count -= 1  # not published: the next event takes its place in the order
            raise EncodingError(
                exc.reason, table=self.spec.name, key=key_values, column=exc.column
            ) from exc
        value = self._envelope.encode_from_row_bytes(
            row_bytes, op, micros // 1000, total_order, self.count
        )
        partition = self.partitioner(changed.customer_id)
        return EncodedEvent(key, value, partition, op, micros, row_bytes)

    def row_bytes(self, changed: ChangedRow) -> bytes:
        """The Avro bytes :meth:`build` would publish for this row (masked): what the sweep
        compares with the state. Raises EncodingError like :meth:`build`."""
        row = changed.row
        if self._sensitive is not None:
            row = dict(row)
            self._sensitive(row)
        try:
            return self._envelope.encode_row(row)
        except EncodingError as exc:
            key_values = {k: row[k] for k in self.spec.key}
            raise EncodingError(
                exc.reason, table=self.spec.name, key=key_values, column=exc.column
            ) from exc

    def delete(self, key: Key, published: Published, total_order: int) -> EncodedEvent:
        """The delete of a row the state holds: op ``d``, ``before`` its published bytes."""
        key_values = dict(zip(self.spec.key, key, strict=False))
        self.count += 1
        found_ms = int(datetime.now(UTC).timestamp() * 1000)
        value = self._envelope.encode_delete_from_row_bytes(
            published.row, found_ms, total_order, self.count
        )
        return EncodedEvent(
            self._encode_key(key_values),
            value,
            self.partitioner(published.customer),
            "d",
            published.version,
            published.row,
        )

    def unencodable(self, changed: ChangedRow) -> tuple[bytes, bytes]:
        """The key and value of a dead letter for a row :meth:`build` refused: JSON.

        :meth:`build` masked the row's sensitive columns before it failed.
        """
        row = changed.row
        key = {k: row[k] for k in self.spec.key}
        return _json(key), _json(self._envelope.aware(row))


def _json(values: dict[str, Any]) -> bytes:
    return json.dumps(values, default=str, sort_keys=True).encode()
