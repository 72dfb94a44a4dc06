"""A change event as the consumers see it: decoded, with where it came from.

The runtime decodes every Kafka message into a :class:`Change` before a target
sees it. ``version`` is the source row's ModifiedDate in microseconds since the
epoch: the number a target stores beside each row to refuse stale events.

``row`` holds the columns the target reads (:attr:`Target.reads
<consumers.target.Target.reads>`, made a :func:`projection` once), with the key and
ModifiedDate, or the whole row for a target that does not say: the rest of the
event is skipped by the reader, never built. The raw bytes stay whole, for a dead
letter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from queuestream.errors import DecodeError
from queuestream.tables import TABLES
from schemas.avro import AvroCodec, Projection

__all__ = ["Change", "decode_change", "projection", "projections", "version_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OPS = frozenset("cudr")


def version_of(moment: datetime) -> int:
    """A source version: an aware datetime in whole microseconds since the epoch.

    The same as ``(moment - epoch) // timedelta(microseconds=1)``, in 60% of the time
    (a call for every event a consumer decodes)."""
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


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
        """The key's values of ``columns``, in that order (a key of one column at a third
        of the general case's cost: a call for every row a batch writes)."""
        key = self.key
        if len(columns) == 1:
            return (key[columns[0]],)
        return tuple([key[c] for c in columns])


def _constructor() -> Callable[..., Change]:
    """``Change(*values)`` without the frozen dataclass's ``__init__``.

    That ``__init__`` sets each of the twelve fields through ``object.__setattr__``, which
    cost more than decoding the key. This one, written from :func:`dataclasses.fields`,
    sets the slots through their descriptors: the same object, at a third of the cost.
    """
    names = [f.name for f in fields(Change)]
    lines = [f"def make({', '.join(names)}):", "    change = _new(Change)"]
    lines += [f"    _{name}(change, {name})" for name in names]
    lines.append("    return change")
    namespace: dict[str, Any] = {f"_{n}": getattr(Change, n).__set__ for n in names}
    namespace.update(_new=object.__new__, Change=Change)
    exec("\n".join(lines), namespace)
    made: Callable[..., Change] = namespace["make"]
    return made


_change = _constructor()
#: The key columns of each table, to check a row against its key.
_KEYS = {t.name: t.key for t in TABLES}


def _envelope(after: Projection | None) -> Projection:
    """What a Change needs of an envelope, ``after`` cut to a part (None: whole). The rest
    (the source block's constant strings and window, the published time, the
    transaction's order) is skipped, never built."""
    parts = {
        "before": Projection("ModifiedDate"),
        "source": Projection("ts_ms", "refresh_id"),
        "transaction": Projection("id"),
    }
    if after is None:
        return Projection("op", "after", **parts)
    return Projection("op", after=after, **parts)


#: Whole rows: for a target that does not say what it reads.
_NEEDED = _envelope(None)


def projection(table: str, reads: Sequence[str] | None) -> Projection:
    """What to decode of ``table``'s events for a target that reads ``reads`` of its rows.

    The row keeps its key columns and ModifiedDate (:func:`decode_change` checks the
    one and takes the version from the other) and ``reads``; None keeps it whole. Make
    one per table and keep it: a reader is compiled per projection object.
    """
    if reads is None:
        return _NEEDED
    return _envelope(Projection(*dict.fromkeys([*_KEYS[table], "ModifiedDate", *reads])))


def projections(
    tables: Iterable[str], reads: Mapping[str, Sequence[str]] | None
) -> dict[str, Projection]:
    """One :func:`projection` for each of ``tables``, by table, for a target's ``reads``
    (:attr:`Target.reads <consumers.target.Target.reads>`; a table left out: whole)."""
    return {table: projection(table, (reads or {}).get(table)) for table in tables}


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
    fields: Projection = _NEEDED,
) -> Change:
    """Decode one message of a change topic, or raise :class:`DecodeError` naming it.

    ``fields``: the :func:`projection` of ``table`` for the target (whole rows by
    default)."""
    if raw_value is None:
        msg = (
            f"{topic}[{partition}]@{offset}: a tombstone (null value) is not a change event "
            "(the intake skips them)"
        )
        raise DecodeError(msg, table=table, raw=raw_value)
    try:
        key = codec.decode(table, "key", raw_key)
        envelope = codec.decode(table, "value", raw_value, fields)
    except DecodeError as exc:  # the codec names the schema ("orders.key"); say the table
        field = "key" if exc.table.endswith(".key") else "value"
        msg = f"{topic}[{partition}]@{offset}: {exc.reason}"
        raise DecodeError(msg, table=table, raw=raw_value, column=field) from exc
    if key is None or envelope is None:  # pragma: no cover - decode returns None only for None
        msg = f"{topic}[{partition}]@{offset}: empty key or value"
        raise DecodeError(msg, table=table, raw=raw_value)
    op = envelope.get("op")
    row = envelope.get("after")
    source = envelope.get("source") or {}
    if op == "d":
        before = envelope.get("before")
        stamp = before.get("ModifiedDate") if before else None
        version = version_of(stamp) if stamp else int(source.get("ts_ms", 0)) * 1000
        row = None
    elif op in _OPS and row is not None:
        version = version_of(row["ModifiedDate"])
        for column in _KEYS.get(table, ()):
            if row.get(column) != key.get(column):
                msg = f"{topic}[{partition}]@{offset}: key and row disagree"
                raise DecodeError(msg, table=table, raw=raw_value, key=key, column=column)
    else:
        where = f"{topic}[{partition}]@{offset}"
        msg, column = (
            (f"{where}: unknown op {op!r}", "op")
            if op not in _OPS
            else (f"{where}: op {op!r} without an 'after' row", "after")
        )
        raise DecodeError(msg, table=table, raw=raw_value, key=key, column=column)
    refresh_id = source.get("refresh_id") or (envelope.get("transaction") or {}).get("id")
    return _change(
        table,
        op,
        key,
        row,
        version,
        refresh_id if type(refresh_id) is str else str(refresh_id),
        topic,
        partition,
        offset,
        timestamp_ms,
        raw_key,
        raw_value,
    )
