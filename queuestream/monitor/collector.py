"""Collecting one snapshot from Kafka: topics, groups and their lag, the last batch.

:class:`SnapshotCollector` keeps its Kafka clients between snapshots (the
monitor takes one every few seconds) and puts together what ``topics``
(figures per partition), ``lag`` (per group), the batches topic's reader
(:func:`queuestream.batches.read_last_end`: the last committed END) and the
producers' status topic (:mod:`queuestream.producer_status`) find.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from confluent_kafka.admin import AdminClient

from queuestream.batches import read_last_end
from queuestream.kafka_clients import admin_client, batches_topic
from queuestream.kafka_reading import MessageCounter
from queuestream.monitor.lag import group_lags
from queuestream.monitor.snapshot import LastBatch, Snapshot
from queuestream.monitor.topics import collect_topics, dead_letters
from queuestream.producer_status import read_statuses
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["SnapshotCollector"]


class SnapshotCollector:
    """Collects snapshots for one prefix; keeps its Kafka clients between snapshots.

    ``groups``, when given, narrows the consumer groups to those names.
    """

    def __init__(
        self, settings: Settings, codec: AvroCodec | None = None, groups: Iterable[str] = ()
    ) -> None:
        self.settings = settings
        self.codec = codec or AvroCodec.from_url(
            settings.topic_prefix, settings.schema_registry_url
        )
        self.groups = tuple(groups)
        self._admin: AdminClient = admin_client(settings)
        self._counter = MessageCounter(settings, "queuestream-monitor")

    def close(self) -> None:
        self._counter.close()

    def collect(self) -> Snapshot:
        settings = self.settings
        taken_at = datetime.now(UTC)
        now_ms = int(taken_at.timestamp() * 1000)
        topics = collect_topics(self._admin, settings, now_ms)
        ours = [t for t in topics if t.role != "dead letters"]
        groups = group_lags(self._admin, self._counter, ours, now_ms, self.groups)
        batches = next((t for t in topics if t.name == batches_topic(settings)), None)
        last_batch = None
        if batches is not None and batches.retained:
            # The last END of any producer, unless a transactional id is set.
            end = read_last_end(settings, self.codec, settings.transactional_id).marker
            last_batch = None if end is None else LastBatch.from_end(end, taken_at)
        return Snapshot(
            taken_at=taken_at,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            prefix=settings.topic_prefix,
            topics=topics,
            groups=groups,
            last_batch=last_batch,
            dead_letters=dead_letters(topics),
            producers=read_statuses(settings),
        )
