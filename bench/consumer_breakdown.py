"""The consumer benchmark's breakdown (``--breakdown``): fetch, decode and apply, apart.

The target's committed messages are read back from Kafka (timed: fetch),
decoded with ``decode_change`` as the runtime does, only the columns the target
reads (timed: decode), and applied with ``Target.apply``
in one transaction to another fresh database (timed: target apply, i.e. mapping
in Python plus SQL), without the runtime: a PostgreSQL database on the server, or a
SQLite file without one.
"""

from __future__ import annotations

import functools
import time

from bench.errors import BenchError, Deadline
from bench.readback import read_committed
from bench.scratch import postgres_database, sqlite_database, writer_engine
from consumers.assembly import Batch, Slot
from consumers.changes import Change, decode_change, projections
from consumers.target import ApplyReport, Target
from queuestream.settings import Settings
from queuestream.tables import topic_for
from schemas.avro import AvroCodec

__all__ = ["breakdown"]


def breakdown(
    target: Target, settings: Settings, server_url: str | None, deadline: Deadline
) -> tuple[float, float, float, int]:
    """(fetch, decode, target apply) seconds and the events, without the runtime."""
    prefix = settings.topic_prefix
    tables = {topic_for(prefix, t): t for t in target.tables}
    started = time.perf_counter()
    found = read_committed(settings.kafka_bootstrap_servers, list(tables), deadline)
    fetch_seconds = time.perf_counter() - started

    codec = AvroCodec.from_url(prefix, settings.schema_registry_url)
    started = time.perf_counter()
    slots: dict[Slot, list[Change]] = {}
    # The columns the target reads, as the runtime decodes them (one projection a table).
    fields = projections(target.tables, target.reads)
    for (topic, partition), records in found.items():
        table = tables[topic]
        decode = functools.partial(
            decode_change,
            codec,
            table,
            topic=topic,
            partition=partition,
            fields=fields[table],
        )
        slots[(table, partition)] = [
            decode(offset=offset, timestamp_ms=ms, raw_key=key, raw_value=value)
            for offset, ms, key, value in records
        ]
    by_table = Batch([], []).tables(slots)  # the runtime's order: foreign keys, partitions
    decode_seconds = time.perf_counter() - started
    changes = {t: by_table.get(t, []) for t in target.tables}

    database = postgres_database(server_url) if server_url is not None else sqlite_database()
    with database as url:
        engine = writer_engine(url)
        try:
            with engine.begin() as conn:
                target.create_schema(conn)
            report = ApplyReport()
            started = time.perf_counter()
            with engine.begin() as conn:
                target.apply(conn, changes, report)
            apply_seconds = time.perf_counter() - started
        finally:
            engine.dispose()
    if report.rejected:
        msg = f"{target.name} breakdown: {len(report.rejected)} changes rejected"
        raise BenchError(msg)
    return fetch_seconds, decode_seconds, apply_seconds, sum(len(v) for v in slots.values())
