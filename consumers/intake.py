"""Kafka messages in: each one becomes a held change, poison, or a note about its partition.

Step 1 of the consumer's loop (:mod:`.runtime`). A message from a change topic is
decoded into a :class:`~consumers.changes.Change` and held by the
:class:`~consumers.assembly.Assembler` until its refresh is whole. What else a
message can be:

- the end of a partition (for now): noted by :class:`~consumers.ownership.Ownership`;
- past a bounded run's stop: ignored;
- the event before the target's stored offset, read back only to learn which
  refresh the partition got to (see :meth:`Ownership.start_offset
  <consumers.ownership.Ownership.start_offset>`): not applied again;
- a tombstone (null value, written after each delete for compacted topics): no
  event; skipped without a word (a DEBUG line), never a dead letter, and held only
  so that the stored offsets move past it (:meth:`Assembler.add_tombstone
  <consumers.assembly.Assembler.add_tombstone>`);
- undecodable: held as poison, bound for the dead-letter topic (promise 6);
- a fatal Kafka error: the consumer stops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import KafkaError, Message

from consumers.assembly import Assembler, Tombstone
from consumers.changes import decode_change, projections
from consumers.dead_letters import DeadLetter
from consumers.markers import EndMarkers
from consumers.ownership import Ownership
from queuestream.errors import DecodeError, FatalError
from schemas.avro import AvroCodec

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    """Takes the messages of the change topics ``tables`` (topic -> table).

    ``reads``: the source columns the target reads of each table's rows
    (:attr:`Target.reads <consumers.target.Target.reads>`); only those are decoded.
    """

    def __init__(
        self,
        codec: AvroCodec,
        tables: Mapping[str, str],
        ownership: Ownership,
        assembler: Assembler,
        markers: EndMarkers,
        reads: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.codec = codec
        self.tables = tables
        self.ownership = ownership
        self.assembler = assembler
        self.markers = markers
        self._fields = projections(tables.values(), reads)

    def take(self, message: Message) -> None:
        topic = message.topic() or ""
        partition = message.partition() or 0
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and topic in self.tables:
                self.ownership.reached_end(topic, partition)
            elif error.fatal():
                msg = f"Kafka consumer failed: {error.str()}"
                raise FatalError(msg)
            else:
                log.warning("Kafka: %s", error.str())
            return
        offset = message.offset() or 0
        if not self.ownership.arrived(topic, partition, offset):
            return
        read_back = self.ownership.read_back(topic, partition, offset)
        _, timestamp_ms = message.timestamp()
        key, value = message.key(), message.value()
        if value is None:
            log.debug("%s[%d]@%d: a tombstone, skipped", topic, partition, offset)
            if not read_back:
                self.assembler.add_tombstone(
                    Tombstone(self.tables[topic], topic, partition, offset)
                )
            return
        table = self.tables[topic]
        try:
            change = decode_change(
                self.codec,
                table,
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp_ms=timestamp_ms,
                raw_key=key,
                raw_value=value,
                fields=self._fields[table],
            )
        except DecodeError as exc:
            if not read_back:  # else: applied (or dead-lettered) before
                poison = DeadLetter(topic, partition, offset, timestamp_ms, key, value, exc)
                self.assembler.add_poison(poison)
            return
        self.markers.need(timestamp_ms)
        if read_back:
            # The last event applied here before we owned the partition: it is not applied
            # again, but its refresh and every earlier one are done on this partition.
            self.assembler.applied_through((change.table, partition), change.refresh_id)
            return
        self.assembler.add(change)
