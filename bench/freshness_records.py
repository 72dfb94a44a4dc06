"""What bench/freshness.py reads back after a run: refreshes, sync logs, commit times.

The batches topic's committed markers (with the Kafka commit time the producer
logged per refresh), each target's sync log (``consumers/sync_log.py``; the
commit time of the transaction that wrote each row, where PostgreSQL tracks
commit timestamps), and whether it does. The figures made of them are in
bench/freshness_figures.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.errors import Deadline
from bench.freshness_figures import Refresh, committed_seconds, decode_refreshes
from bench.readback import read_committed
from bench.scratch import writer_engine
from consumers.sync_log import SYNC_LOG
from queuestream.kafka_clients import batches_topic
from queuestream.settings import load_settings

__all__ = ["read_refreshes", "read_sync_log", "tracks_commit_times"]


def tracks_commit_times(url: str) -> bool:
    """Whether the server at ``url`` records commit times (``track_commit_timestamp``)."""
    engine = writer_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SHOW track_commit_timestamp").scalar() == "on"
    finally:
        engine.dispose()


def read_sync_log(url: str, name: str, commit_times: bool) -> list[dict[str, Any]]:
    """The target's sync log: refresh, rows, applied_at, duration, commit time (or None)."""
    committed = (
        sa.func.pg_xact_commit_timestamp(sa.literal_column("xmin")) if commit_times else sa.null()
    )
    query = sa.select(
        SYNC_LOG.c.refresh_id,
        SYNC_LOG.c.rows_applied,
        SYNC_LOG.c.applied_at,
        SYNC_LOG.c.duration_ms,
        committed.label("committed_at"),
    ).where(SYNC_LOG.c.target == name)
    engine = writer_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]
    except sa.exc.ProgrammingError:
        return []  # the consumer has not created its tables yet
    finally:
        engine.dispose()


def read_refreshes(
    bootstrap: str, prefix: str, deadline: Deadline, producer_log: Path
) -> dict[str, Refresh]:
    """Every committed refresh of the batches topic, by refresh id, with the time the
    producer logged for its Kafka commit."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix)
    topic = batches_topic(settings)
    found = read_committed(bootstrap, [topic], deadline)
    committed = committed_seconds(producer_log.read_text(errors="replace"))
    return {
        rid: replace(refresh, committed_after=committed.get(rid))
        for rid, refresh in decode_refreshes(prefix, found[(topic, 0)]).items()
    }
