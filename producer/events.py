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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

from producer.changed_rows import ChangedRow, row_layout
from producer.partitioning import CustomerPartitioner
from producer.sensitive import ColumnPolicy
from producer.state_changelog import Key, Published, state_key_of
from queuestream import __version__
from queuestream.errors import EncodingError
from queuestream.tables import TableSpec
from schemas.avro import AvroCodec
from schemas.avro.misfit import unreadable
from schemas.avro.wall_time import wall_micros, wall_micros_in

__all__ = [
    "STATE_KEY",
    "EncodedEvent",
    "EventBuilder",
    "PreparedRow",
    "RefreshContext",
    "RefusedRow",
    "RowPreparer",
    "version_micros",
]


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


#: All of a change event that its row alone decides: made by :class:`RowPreparer`, in
#: this process or in the row reader's (:mod:`producer.row_process`); the event's place
#: in the batch is added by :meth:`EventBuilder.finish`. A plain tuple, the cheapest to
#: make and to send between processes: ``(key, row, op, version, partition, state_key,
#: customer)``: the event's Kafka key, the row's Avro bytes (``after``), the op,
#: ModifiedDate in microseconds since the epoch, the partition, the row's key in the
#: state (at :data:`STATE_KEY`, as in a :class:`RefusedRow`), its CustomerID.
PreparedRow = tuple[bytes, bytes, str, int, int, Key, int]
#: Where a PreparedRow and a RefusedRow hold the row's key in the state.
STATE_KEY: Final = 5


class RefusedRow(NamedTuple):
    """A row :class:`RowPreparer` could not encode: its dead letter and why."""

    key: bytes  # the dead letter's key and value: JSON
    value: bytes
    reason: str
    column: str | None
    key_values: dict[str, Any]
    #: At STATE_KEY, as in a PreparedRow; None when a key column holds no integer (text
    #: in a SQLite key column): such a row has no place in the state.
    state_key: Key | None

    def error(self, table: str) -> EncodingError:
        return EncodingError(self.reason, table=table, key=self.key_values, column=self.column)


class RowPreparer:
    """Makes the part of a table's events that depends on the row alone, for one refresh:
    op, key, the row's Avro bytes, partition. Any process can hold one.

    It reads a row by its values' positions (:class:`RowLayout`), with no dict made of
    it but for a row it refuses."""

    def __init__(
        self,
        spec: TableSpec,
        codec: AvroCodec,
        policy: ColumnPolicy,
        partitioner: CustomerPartitioner,
        zone: ZoneInfo,
        window_start: datetime | None,
        resync: bool,
    ) -> None:
        self.spec = spec
        self.partitioner = partitioner
        self.zone = zone
        self.rows = codec.row_encoder(spec.name, zone)
        self.encode_key = codec.encoder(spec.name, "key")
        self.layout = layout = row_layout(spec)
        self._encode_key = codec.key_encoder(spec.name, layout.columns)
        self._encode_values = self.rows.values_encoder(layout.columns)
        self._sensitive = policy.for_values(spec.name, layout.columns)
        self._key_columns = spec.key
        self._resync = resync
        self._window_start_us = None if window_start is None else version_micros(window_start)
        self._micros = wall_micros_in(zone)

    def _masked(self, changed: ChangedRow) -> Sequence[Any]:
        """The row's values with sensitive columns handled (a copy; key columns are never
        masked)."""
        return changed.values if self._sensitive is None else self._sensitive(changed.values)

    def row_bytes(self, changed: ChangedRow) -> bytes:
        """The Avro bytes :meth:`prepare` would publish for this row (masked): what the sweep
        compares with the state. Raises EncodingError naming the row."""
        values = self._masked(changed)
        try:
            return self._encode_values(values)
        except EncodingError as exc:
            raise EncodingError(
                exc.reason, table=self.spec.name, key=self._key_values(values), column=exc.column
            ) from exc

    def _key_values(self, values: Sequence[Any]) -> dict[str, Any]:
        return {k: values[i] for k, i in zip(self._key_columns, self.layout.key, strict=True)}

    def prepare(self, changed: ChangedRow, op: str | None = None) -> PreparedRow | RefusedRow:
        """The row's part of its event; ``op`` overrides the op the window gives (the
        sweep's ``r``). The row's timestamps are read as the source's wall times (naive,
        in the source zone) or aware."""
        layout = self.layout
        # Masked before anything can fail: a row that cannot be encoded goes to a
        # dead-letter topic as it is here.
        values = self._masked(changed)
        # Encoded before its dates are read: a date the source could not read (SQLite's
        # text in a date column, an Unreadable) is refused here, naming its column.
        try:
            key = self._encode_key(values)
            row_bytes = self._encode_values(values)
        except EncodingError as exc:
            return self._refused(values, self._key_values(values), exc)
        state_key = self._state_key(values)
        if state_key is None:  # a key Avro writes but the state cannot hold (SQLite's 2.5)
            return self._refused(values, self._key_values(values), self.key_misfit(values))
        micros = self._micros(values[layout.modified])
        if op is None:
            if self._resync:
                op = "r"
            elif (
                self._window_start_us is not None
                and self._micros(values[layout.created]) >= self._window_start_us
            ):
                op = "c"
            else:
                op = "u"
        return (
            key,
            row_bytes,
            op,
            micros,
            self.partitioner(changed.customer_id),
            state_key,
            changed.customer_id,
        )

    def state_key(self, changed: ChangedRow) -> Key | None:
        """The state's key of a row: its key columns, the second 0 when there is none;
        None when a key column holds anything but an integer (SQLite keeps any type in any
        column), which :meth:`prepare` refuses naming the column."""
        return self._state_key(changed.values)

    def _state_key(self, values: Sequence[Any]) -> Key | None:
        key = self.layout.key
        return state_key_of(values[key[0]], values[key[1]] if len(key) > 1 else 0)

    def key_misfit(self, values: Sequence[Any]) -> EncodingError:
        """Why a row whose key :meth:`_state_key` cannot make is refused: its first key
        column that holds no integer (fastavro writes 2.5 or True to an int as 2 or 1, so
        the row would overwrite another's)."""
        for name, i in zip(self._key_columns, self.layout.key, strict=True):
            if type(values[i]) is not int:
                return EncodingError(
                    unreadable(values[i], "int"),
                    table=self.spec.name,
                    key=self._key_values(values),
                    column=name,
                )
        msg = "every key column holds an integer"
        raise AssertionError(msg)

    def _refused(
        self, values: Sequence[Any], key_values: dict[str, Any], error: EncodingError
    ) -> RefusedRow:
        """The dead letter of a row :meth:`prepare` refused: JSON (masked already)."""
        return RefusedRow(
            _json(key_values),
            _json(self.rows.resolved(dict(zip(self.layout.columns, values, strict=False)))),
            error.reason,
            error.column,
            key_values,
            self._state_key(values),
        )


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
        self.preparer = RowPreparer(
            spec,
            codec,
            policy,
            partitioner,
            zone,
            context.window_start,
            context.resync,
        )
        self.count = 0

    def finish(self, prepared: PreparedRow, total_order: int) -> bytes:
        """The event's value: the prepared row in its envelope, at its place in the batch
        (``total_order``) and in its table (the next ``count``)."""
        self.count += 1
        return self._envelope.encode_from_row_bytes(
            prepared[1], prepared[2], prepared[3] // 1000, total_order, self.count
        )

    def build(self, changed: ChangedRow, total_order: int, op: str | None = None) -> EncodedEvent:
        """The event of a changed row (:meth:`RowPreparer.prepare`, then :meth:`finish`).
        Raises EncodingError for a row that cannot be encoded."""
        prepared = self.preparer.prepare(changed, op)
        if isinstance(prepared, RefusedRow):
            raise prepared.error(self.spec.name)
        value = self.finish(prepared, total_order)
        key, row, op, version, partition, _state_key, _customer = prepared
        return EncodedEvent(key, value, partition, op, version, row)

    def delete(self, key: Key, published: Published, total_order: int) -> EncodedEvent:
        """The delete of a row the state holds: op ``d``, ``before`` its published bytes."""
        key_values = dict(zip(self.spec.key, key, strict=False))
        self.count += 1
        found_ms = int(datetime.now(UTC).timestamp() * 1000)
        value = self._envelope.encode_delete_from_row_bytes(
            published.row, found_ms, total_order, self.count
        )
        return EncodedEvent(
            self.preparer.encode_key(key_values),
            value,
            self.partitioner(published.customer),
            "d",
            published.version,
            published.row,
        )


def _json(values: dict[str, Any]) -> bytes:
    return json.dumps(values, default=str, sort_keys=True).encode()
