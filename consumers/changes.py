"""A change event as the consumers see it: decoded, with where it came from.

The runtime decodes every Kafka message into a :class:`Change` before a target
sees it. ``version`` is the source row's ModifiedDate in microseconds since the
epoch: the number a target stores beside each row to refuse stale events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from queuestream.errors import DecodeError
from queuestream.tables import TABLES
from schemas.avro import AvroCodec

__all__ = ["Change", "decode_change", "version_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_OPS = frozenset("cudr")


def version_of(moment: datetime) -> int:
    """A source version: an aware datetime in whole microseconds since the epoch."""
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Change:
    """One decoded change event."""

    table: str  # contract name, e.g. "orders"
    op: str  # c, u, r (upserts) or d (delete)
    key: Mapping[str, Any]  # the primary key record
    row: Mapping[str, Any] | None  # ``after``; None for a delete
    version: int  # source ModifiedDate, microseconds since the epoch
    refresh_id: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    raw_key: bytes | None
    raw_value: bytes | None

    @property
    def is_delete(self) -> bool:
        return self.op == "d"

    def key_tuple(self, columns: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(self.key[c] for c in columns)


_SPECS = {t.name: t for t in TABLES}


def decode_change(
    codec: AvroCodec,
    table: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    raw_key: bytes | None,
    raw_value: bytes | None,
) -> Change:
    """Decode one message of a change topic, or raise :class:`DecodeError` naming it."""
    where = f"{topic}[{partition}]@{offset}"
    if raw_value is None:
        msg = f"{where}: a tombstone (null value) is not a change event (the intake skips them)"
        raise DecodeError(msg, table=table, raw=raw_value)
    try:
        key = codec.decode(table, "key", raw_key)
        envelope = codec.decode(table, "value", raw_value)
    except DecodeError as exc:  # the codec names the schema ("orders.key"); say the table
        field = "key" if exc.table.endswith(".key") else "value"
        msg = f"{where}: {exc.reason}"
        raise DecodeError(msg, table=table, raw=raw_value, column=field) from exc
    if key is None or envelope is None:  # pragma: no cover - decode returns None only for None
        msg = f"{where}: empty key or value"
        raise DecodeError(msg, table=table, raw=raw_value)
    op = envelope.get("op")
    if op not in _OPS:
        msg = f"{where}: unknown op {op!r}"
        raise DecodeError(msg, table=table, raw=raw_value, key=key, column="op")
    row = envelope.get("after")
    source = envelope.get("source") or {}
    if op == "d":
        before = envelope.get("before")
        stamp = before.get("ModifiedDate") if before else None
        version = version_of(stamp) if stamp else int(source.get("ts_ms", 0)) * 1000
        row = None
    else:
        if row is None:
            msg = f"{where}: op {op!r} without an 'after' row"
            raise DecodeError(msg, table=table, raw=raw_value, key=key, column="after")
        version = version_of(row["ModifiedDate"])
    spec = _SPECS.get(table)
    if spec is not None and row is not None:
        mismatch = [c for c in spec.key if row.get(c) != key.get(c)]
        if mismatch:
            msg = f"{where}: key and row disagree"
            raise DecodeError(msg, table=table, raw=raw_value, key=key, column=mismatch[0])
    return Change(
        table=table,
        op=op,
        key=key,
        row=row,
        version=version,
        refresh_id=str(source.get("refresh_id") or (envelope.get("transaction") or {}).get("id")),
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        raw_key=raw_key,
        raw_value=raw_value,
    )
