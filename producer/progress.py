"""The producer's committed progress, read back from the batches topic.

The END marker of each refresh carries the watermark (and the overlap digests,
and in procedure mode the fingerprint of the queue tables published). It is
written in the same Kafka transaction as the refresh's events, so the progress
read here with ``read_committed`` is exactly the progress of what consumers can
see: there is no second store to disagree with Kafka (promise 2). Reading the
marker back is :func:`queuestream.batches.read_last_end`'s; this module turns it
into the producer's :class:`~producer.watermark.Progress`.
"""

from __future__ import annotations

import logging

from producer.watermark import Progress
from queuestream.batches import read_last_end
from queuestream.kafka_clients import batches_topic
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["read_progress"]

log = logging.getLogger(__name__)


def read_progress(settings: Settings, codec: AvroCodec) -> Progress:
    """The last committed END marker of this producer, or empty progress.

    Call it after the transactional producer's init_transactions(), which aborts
    any transaction a crashed predecessor left open, so that the log end is stable.
    """
    producer = settings.effective_transactional_id
    last = read_last_end(settings, codec, producer)
    end = last.marker
    if end is not None:
        return Progress(
            refresh_id=end.refresh_id,
            watermark=end.window_end,
            overlap_seen=Progress.unpack_digests(end.overlap_seen),
            snapshot_fingerprint=end.snapshot_fingerprint,
        )
    if last.oldest_offset > 0:
        log.warning(
            "%s starts at offset %d and holds no END marker of producer %s: its progress "
            "was deleted (retention?). Starting over from the first window; use "
            "--since DATE to re-sync further back",
            batches_topic(settings),
            last.oldest_offset,
            producer,
        )
    return Progress()
