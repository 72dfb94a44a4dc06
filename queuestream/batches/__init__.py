"""The batches topic, ``<prefix>.batches``: a BEGIN and an END record per refresh.

Like Debezium's transaction metadata topic, it brackets each refresh's events.
END carries the refresh's counts (per table, per operation, per partition) and
the producer's progress (watermark, overlap digests, queue snapshot
fingerprint), written in the same Kafka transaction as the events, so the
progress read back is exactly the progress of what consumers can see.

``markers`` holds the typed records and their encoding (the one place that
knows the wire shape of ``schemas/avro/batches.*.avsc``); ``reader`` is the one
reader of the topic, used by the producer's progress, the consumers and the
monitor.
"""

from __future__ import annotations

from queuestream.batches.markers import (
    BeginMarker,
    EndMarker,
    TablePartition,
    decode_batch_key,
    decode_marker,
    encode_batch_key,
    encode_marker,
)
from queuestream.batches.reader import BatchesReader, LastEnd, read_last_end

__all__ = [
    "BatchesReader",
    "BeginMarker",
    "EndMarker",
    "LastEnd",
    "TablePartition",
    "decode_batch_key",
    "decode_marker",
    "encode_batch_key",
    "encode_marker",
    "read_last_end",
]
