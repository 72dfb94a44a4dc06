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
from schemas.avro import AvroCodec, row_schema

__all__ = ["EncodedEvent", "EventBuilder", "RefreshContext", "row_key", "version_micros"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIMESTAMP = "timestamp-micros"


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
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def row_key(spec: TableSpec, row: dict[str, Any]) -> Key:
    """The state's key of a source row: its key columns, the second 0 when there is one."""
    key = spec.key
    if len(key) == 1:
        return (int(row[key[0]]), 0)
    return (int(row[key[0]]), int(row[key[1]]))


def _timestamp_columns(table: str) -> list[str]:
    names = []
    for field in row_schema(table)["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if any(
            isinstance(b, dict) and b.get("logicalType") == "timestamp-micros" for b in branches
        ):
            names.append(field["name"])
    return names


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
        self._timestamps = _timestamp_columns(spec.name)
        self._key_columns = spec.key
        self._resync = context.resync
        self._window_start = context.window_start
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
        self._envelope = codec.envelope_encoder(spec.name, source, published_ms, context.refresh_id)
        self.count = 0

    def build(self, changed: ChangedRow, total_order: int, op: str | None = None) -> EncodedEvent:
        """The event of a changed row; ``op`` overrides the op the window gives (the
        sweep's ``r``)."""
        row = changed.row
        zone = self.zone
        for column in self._timestamps:
            value = row[column]
            if value is not None:
                row[column] = value.replace(tzinfo=zone)
        version: datetime = row["ModifiedDate"]
        key_values = {k: row[k] for k in self._key_columns}
        if op is None:
            if self._resync:
                op = "r"
            elif self._window_start is not None and row["CreatedDate"] >= self._window_start:
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
        micros = version_micros(version)
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
        row = dict(changed.row)
        for column in self._timestamps:
            value = row[column]
            if value is not None:
                row[column] = value.replace(tzinfo=self.zone)
        if self._sensitive is not None:
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
        return _json(key), _json(row)


def _json(values: dict[str, Any]) -> bytes:
    return json.dumps(values, default=str, sort_keys=True).encode()
