"""The END markers of the batches topic, read beside the change topics.

A refresh's END marker says how many events it put on each partition of each
change topic. The consumer applies a refresh once it holds all of the events
on the partitions it owns, so a target never shows an order without its lines.

The reader is a plain (group-less, never committing) read_committed consumer of
the one-partition batches topic. It does not start at the beginning: the first
time it needs a refresh it looks up, with Kafka's offsets-for-times, the first
marker written ``marker_margin_seconds`` before the event that needs it (END is
written after every event of its refresh, so it is found reading forward), and
moves back the same way when an older refresh is needed (after a rebalance or a
replay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from queuestream.errors import BrokerUnavailableError, DecodeError
from queuestream.kafka_clients import batches_topic, consumer_config
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["EndMarker", "EndMarkers"]

log = logging.getLogger(__name__)

_LOOKUP_TIMEOUT = 10.0
_KEEP = 100_000  # END markers kept in memory (about 3 days of refreshes every 3 s)


@dataclass(frozen=True, slots=True)
class EndMarker:
    refresh_id: str
    offset: int  # in the batches topic: refreshes commit in this order
    ts_ms: int
    event_count: int
    partition_counts: dict[str, int] = field(default_factory=dict)  # "<table>:<partition>"

    def expected(self, table: str, partition: int) -> int | None:
        """Events on ``table``'s ``partition``; None when the marker does not say (old producer)."""
        if not self.partition_counts and self.event_count:
            return None
        return self.partition_counts.get(f"{table}:{partition}", 0)


class EndMarkers:
    """Finds and keeps the END markers that pending refreshes need."""

    def __init__(
        self, settings: Settings, codec: AvroCodec, group: str, *, until_ms: int | None = None
    ) -> None:
        self.codec = codec
        #: END markers stamped after this are ignored: their refreshes committed too late
        #: for a rebuild as of that moment (None: every marker counts).
        self.until_ms = until_ms
        #: The refreshes whose markers are still needed (set by the runtime): never pruned.
        self.needed: Callable[[], set[str]] = set
        self.keep = _KEEP
        self.topic = batches_topic(settings)
        self.margin_ms = int(settings.marker_margin_seconds * 1000)
        self.ends: dict[str, EndMarker] = {}
        self._from_ms: int | None = None  # markers from this time on are being read
        self._consumer = Consumer(
            consumer_config(settings, f"{group}.markers", **{"enable.partition.eof": False})
        )

    def need(self, event_ts_ms: int) -> None:
        """Make sure markers from ``event_ts_ms`` minus the margin on are read."""
        wanted = max(0, event_ts_ms - self.margin_ms)
        if self._from_ms is not None and self._from_ms <= wanted:
            return
        # Events of other partitions come a little out of time order: look back a second
        # margin, so that they do not each cost a look-up (a round trip to the broker).
        self._seek(max(0, wanted - self.margin_ms))

    def _seek(self, from_ms: int) -> None:
        try:
            found = self._consumer.offsets_for_times(
                [TopicPartition(self.topic, 0, from_ms)], timeout=_LOOKUP_TIMEOUT
            )
        except KafkaException as exc:
            msg = f"cannot look up batch markers in {self.topic}: {exc.args[0]}"
            raise BrokerUnavailableError(msg) from None
        offset = found[0].offset if found and found[0].offset >= 0 else OFFSET_END
        log.debug(
            "reading batch markers of %s from offset %s (time %d)", self.topic, offset, from_ms
        )
        self._consumer.assign([TopicPartition(self.topic, 0, offset)])
        self._from_ms = from_ms

    def poll(self) -> int:
        """Read the markers that have arrived; returns how many END markers were new."""
        if self._from_ms is None:
            return 0
        found = 0
        while True:
            if len(self.ends) >= self.keep:
                self._prune()
                if len(self.ends) >= self.keep:
                    return found  # all still needed: read on once some are applied
            messages = self._consumer.consume(num_messages=500, timeout=0)
            if not messages:
                self._prune()
                return found
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("batch markers: %s", error.str())
                    continue
                try:
                    marker = self.codec.decode("batches", "value", message.value())
                except DecodeError as exc:
                    log.warning(
                        "skipping an undecodable batch marker at offset %d: %s",
                        message.offset(),
                        exc,
                    )
                    continue
                if marker is None or marker["status"] != "END":
                    continue
                if self.until_ms is not None and message.timestamp()[1] > self.until_ms:
                    continue
                refresh_id = marker["refresh_id"]
                if refresh_id not in self.ends:
                    found += 1
                self.ends[refresh_id] = EndMarker(
                    refresh_id=refresh_id,
                    offset=message.offset() or 0,
                    ts_ms=message.timestamp()[1],
                    event_count=marker["event_count"],
                    partition_counts=dict(marker.get("partition_counts") or {}),
                )

    def read_through(self, offset: int) -> bool:
        """Have the markers before ``offset`` of the batches topic been read?"""
        if self._from_ms is None:
            return False
        try:
            [position] = self._consumer.position([TopicPartition(self.topic, 0)])
        except KafkaException:
            return False
        return position.offset >= offset

    def get(self, refresh_id: str) -> EndMarker | None:
        return self.ends.get(refresh_id)

    def _prune(self) -> None:
        """Forget markers older than every one still needed (keeping the newest half).

        A marker is needed while its refresh is held (``needed``); markers after the
        oldest held one belong to refreshes whose events are still to come: a rebuild
        reading a long history reads markers far ahead of the events. When all are
        needed, :meth:`poll` stops reading until refreshes are applied. Needing a
        forgotten one later seeks back for it.
        """
        if len(self.ends) <= self.keep:
            return
        needed = self.needed() & set(self.ends)
        by_offset = sorted(self.ends.values(), key=lambda e: e.offset)
        floor = min((self.ends[r].offset for r in needed), default=None)
        cut = max(0, len(by_offset) - self.keep // 2)
        if floor is not None:
            cut = min(cut, next(i for i, e in enumerate(by_offset) if e.offset >= floor))
        if cut == 0:
            return
        kept = by_offset[cut:]
        self.ends = {e.refresh_id: e for e in kept}
        self._from_ms = max(self._from_ms or 0, kept[0].ts_ms)

    def close(self) -> None:
        self._consumer.close()
