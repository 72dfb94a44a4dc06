"""BEGIN and END of a refresh as typed records, and their encoding on the wire.

The batches topic's contract is ``schemas/avro/batches.key.avsc`` (the key: the
producer's transactional id) and ``schemas/avro/batches.value.avsc`` (one record
shape for both statuses). This module is the one place that knows that shape:
the producer builds :class:`BeginMarker` and :class:`EndMarker` and encodes them
here, and every reader decodes them here.

Partition counts are keyed by ``(table, partition)`` in Python. An Avro map's
keys are strings, so the wire spells them ``"<table>:<partition>"``; that
spelling exists only in :meth:`EndMarker.to_record` and :func:`marker_from_record`.
The wire format is a released contract: the encoding gives the same bytes as
before these classes existed (field values and map order are kept as given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from queuestream.errors import DecodeError
from queuestream.tables import BATCHES
from schemas.avro import AvroCodec

__all__ = [
    "BeginMarker",
    "EndMarker",
    "TablePartition",
    "decode_batch_key",
    "decode_marker",
    "encode_batch_key",
    "encode_marker",
    "marker_from_record",
    "now_ms",
]

TablePartition = tuple[str, int]  # (contract table name, partition), e.g. ("orders", 3)

_BEGIN = "BEGIN"
_END = "END"


def now_ms() -> int:
    """The wall clock in milliseconds since the epoch: a marker's ``ts_ms``."""
    return int(datetime.now(UTC).timestamp() * 1000)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class BeginMarker:
    """BEGIN: the first record of a refresh's Kafka transaction."""

    refresh_id: str
    mode: str  # "watermark", "procedure" or "sweep"
    window_start: datetime | None = None
    window_end: datetime | None = None  # the watermark this refresh moves to
    since_override: datetime | None = None  # a start date given for this refresh only
    ts_ms: int = field(default_factory=now_ms)  # when the marker was built

    def end(
        self,
        *,
        counts: dict[str, int],
        op_counts: dict[str, int],
        partition_counts: dict[TablePartition, int],
        snapshot_fingerprint: str | None = None,
        overlap_seen: bytes | None = None,
    ) -> EndMarker:
        """The END that closes this refresh, stamped now."""
        return EndMarker(
            refresh_id=self.refresh_id,
            mode=self.mode,
            window_start=self.window_start,
            window_end=self.window_end,
            since_override=self.since_override,
            event_count=sum(counts.values()),
            counts=counts,
            op_counts=op_counts,
            partition_counts=partition_counts,
            snapshot_fingerprint=snapshot_fingerprint,
            overlap_seen=overlap_seen,
        )

    def to_record(self) -> dict[str, Any]:
        """The Avro record (batches.value.avsc): a BEGIN counts nothing yet."""
        return _refresh_fields(_BEGIN, self) | {
            "event_count": 0,
            "counts": {},
            "op_counts": {},
            "partition_counts": {},
            "snapshot_fingerprint": None,
            "overlap_seen": None,
        }


@dataclass(frozen=True, slots=True)
class EndMarker:
    """END: the last record of a refresh's Kafka transaction, with its counts and progress.

    The last three fields say where a marker read back lies in the batches topic
    (its key, offset and message timestamp); they are not part of the record and
    keep their defaults on a marker being built.
    """

    refresh_id: str
    mode: str  # "watermark", "procedure" or "sweep"
    window_start: datetime | None = None
    window_end: datetime | None = None  # the producer's watermark after this refresh
    since_override: datetime | None = None
    event_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # events per table
    op_counts: dict[str, int] = field(default_factory=dict)  # events per "<table>.<op>"
    partition_counts: dict[TablePartition, int] = field(default_factory=dict)
    snapshot_fingerprint: str | None = None  # procedure mode: digest of the queue tables
    overlap_seen: bytes | None = None  # 8-byte digests of the changes at the window's end
    ts_ms: int = field(default_factory=now_ms)  # when the marker was built
    producer: str = ""  # the record's key: the transactional id of the producer
    offset: int = -1  # in the batches topic: refreshes commit in this order
    timestamp_ms: int = -1  # the message's timestamp: when the producer wrote it

    def expected(self, table: str, partition: int) -> int | None:
        """Events on ``table``'s ``partition``; None when the marker does not say (old producer)."""
        if not self.partition_counts and self.event_count:
            return None
        return self.partition_counts.get((table, partition), 0)

    def to_record(self) -> dict[str, Any]:
        """The Avro record (batches.value.avsc)."""
        return _refresh_fields(_END, self) | {
            "event_count": self.event_count,
            "counts": self.counts,
            "op_counts": self.op_counts,
            "partition_counts": {f"{t}:{p}": n for (t, p), n in self.partition_counts.items()},
            "snapshot_fingerprint": self.snapshot_fingerprint,
            "overlap_seen": self.overlap_seen,
        }


def _refresh_fields(status: str, marker: BeginMarker | EndMarker) -> dict[str, Any]:
    """The fields BEGIN and END share: which refresh, when, and its window."""
    return {
        "status": status,
        "refresh_id": marker.refresh_id,
        "ts_ms": marker.ts_ms,
        "mode": marker.mode,
        "window_start": marker.window_start,
        "window_end": marker.window_end,
        "since_override": marker.since_override,
    }


def _table_partition(key: str, raw: bytes | None) -> TablePartition:
    table, colon, partition = key.rpartition(":")
    if not colon or not table or not partition.isdigit():
        reason = (
            f"partition count key {key!r} is not '<table>:<partition>': the marker was "
            "not written by queuestream's producer"
        )
        raise DecodeError(reason, table=BATCHES, column="partition_counts", raw=raw)
    return table, int(partition)


def marker_from_record(record: dict[str, Any], raw: bytes | None = None) -> BeginMarker | EndMarker:
    """The marker a decoded Avro record holds (``raw``: its bytes, for errors)."""
    refresh_id, mode, ts_ms = record["refresh_id"], record["mode"], record["ts_ms"]
    window_start = _aware(record.get("window_start"))
    window_end = _aware(record.get("window_end"))
    since_override = _aware(record.get("since_override"))
    if record["status"] == _BEGIN:
        return BeginMarker(refresh_id, mode, window_start, window_end, since_override, ts_ms)
    return EndMarker(
        refresh_id,
        mode,
        window_start,
        window_end,
        since_override,
        event_count=int(record.get("event_count") or 0),
        counts={t: int(n) for t, n in (record.get("counts") or {}).items()},
        op_counts={k: int(n) for k, n in (record.get("op_counts") or {}).items()},
        partition_counts={
            _table_partition(k, raw): int(n)
            for k, n in (record.get("partition_counts") or {}).items()
        },
        snapshot_fingerprint=record.get("snapshot_fingerprint"),
        overlap_seen=record.get("overlap_seen"),
        ts_ms=ts_ms,
    )


def encode_marker(codec: AvroCodec, marker: BeginMarker | EndMarker) -> bytes:
    """A marker's value bytes, framed as the codec frames every value."""
    return codec.encode(BATCHES, "value", marker.to_record())


def decode_marker(codec: AvroCodec, data: bytes | None) -> BeginMarker | EndMarker | None:
    """The marker in a value (None for no value); DecodeError, with the bytes, if unreadable."""
    record = codec.decode(BATCHES, "value", data)
    return None if record is None else marker_from_record(record, data)


def encode_batch_key(codec: AvroCodec, producer: str) -> bytes:
    """The key of every marker of ``producer`` (its transactional id)."""
    return codec.encode(BATCHES, "key", {"producer": producer})


def decode_batch_key(codec: AvroCodec, data: bytes | None) -> str | None:
    """The producer a marker's key names (None for no key)."""
    record = codec.decode(BATCHES, "key", data)
    return None if record is None else str(record["producer"])
