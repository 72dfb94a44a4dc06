"""Rebuild a target as it was at a point in time (promise 7, ``queuestream rebuild``).

A fresh target database is filled from the earliest retained offsets up to a
moment T, then the run stops. "As it was at T" means: every refresh whose END
marker was written at or before T, and nothing after. The change topics keep
history (``retention.ms`` -1), so nothing before T is missing.

The stop offsets are looked up with offsets-for-times (:mod:`.positions`): per
partition, the first message stamped after T. The run is the ordinary consumer
runtime in bounded mode (:class:`~consumers.runtime.StopAt`): it owns
every partition without joining the group, applies whole refreshes in commit
order with the same exactly-once bookkeeping, and commits nothing to Kafka. The
rebuilt target holds the offsets it applied, so ``queuestream consume --target
NEW_URL`` later goes on from T with the usual group.

A rebuild of many events is split across processes by partition number, one per
core (:mod:`.rebuild_workers`), as a consumer group shares the partitions: the new
database is not in use until the rebuild ends, so each worker can commit its share
of a refresh on its own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from consumers import offsets, target_named
from consumers.rebuild_workers import run_shares, shares_of
from consumers.runtime import BatchOutcome, ConsumerRuntime, RunStats, StopAt
from queuestream.databases import create_engine, describe_url, retriable_outages
from queuestream.errors import ConfigurationError
from queuestream.kafka_clients import admin_client, batches_topic, ensure_topics
from queuestream.kafka_offsets import log_bounds, offsets_at, partitions_of, to_ms
from queuestream.settings import Settings
from queuestream.tables import topic_for

__all__ = [
    "EVENTS_PER_WORKER",
    "MOST_WORKERS",
    "RebuildPlan",
    "plan_rebuild",
    "rebuild",
    "usable_cores",
    "workers_for",
]

log = logging.getLogger(__name__)

#: A worker process is started for every this many offsets to read (up to one per core
#: and one per partition number): starting one takes 0.5 s of imports and connections.
EVENTS_PER_WORKER = 25_000
#: At most this many by default: each holds about 200 MB and a database connection.
MOST_WORKERS = 8
_CPU_MAX = "/sys/fs/cgroup/cpu.max"


@dataclass(frozen=True, slots=True)
class RebuildPlan:
    """What a rebuild as of ``as_of`` will read: ``events`` offsets over the partitions."""

    target: str
    target_url: str
    as_of: datetime
    stop: StopAt
    events: int  # offsets to read up to the stop (transaction markers included)


def plan_rebuild(settings: Settings, target: str, as_of: datetime) -> RebuildPlan:
    """Look up where ``as_of`` is in the target's topics and check the new target is empty."""
    spec = target_named(target)
    moment_ms = to_ms(as_of)
    url = settings.target_url_for(target)
    _check_fresh(url, target)
    admin = admin_client(settings)
    ensure_topics(settings, admin)
    topics = [topic_for(settings.topic_prefix, t) for t in spec.tables]
    partitions = partitions_of(admin, topics)
    batches = (batches_topic(settings), 0)
    bounds = log_bounds(admin, [*partitions, batches])
    # The first message stamped after T: everything before it was written at or before T.
    stop = offsets_at(admin, moment_ms + 1, bounds)
    markers_end = stop.pop(batches)
    trimmed = sorted(f"{t}[{p}]" for t, p in partitions if bounds[(t, p)].low > 0)
    if trimmed:
        log.warning(
            "retention has deleted the oldest events of %s: the rebuild starts where they "
            "begin and can miss rows changed only before then",
            ", ".join(trimmed),
        )
    return RebuildPlan(
        target=target,
        target_url=url,
        as_of=as_of,
        stop=StopAt(offsets=stop, until_ms=moment_ms, markers_end=markers_end),
        events=sum(max(0, stop[p] - bounds[p].low) for p in partitions),
    )


def _check_fresh(url: str, target: str) -> None:
    """A rebuild fills a new database: refuse one that already holds applied offsets."""
    engine = create_engine(url)
    try:
        with retriable_outages(engine), engine.connect() as conn:
            if not sa.inspect(conn).has_table(offsets.OFFSETS.name):
                return
            held = offsets.stored_offsets(conn, target)
    finally:
        engine.dispose()
    if any(held.values()):
        msg = (
            f"{describe_url(url)} already holds {target} data (offsets in "
            f"{offsets.OFFSETS.name}): rebuild into a new, empty database, then switch to it"
        )
        raise ConfigurationError(msg)


def workers_for(plan: RebuildPlan, asked: int | None = None) -> int:
    """How many processes rebuild ``plan``: ``asked``, else one per usable core (at most
    :data:`MOST_WORKERS`) and per :data:`EVENTS_PER_WORKER` offsets; never more than the
    partition numbers, and one into SQLite (a single writer)."""
    numbers = len({p for _, p in plan.stop.offsets}) or 1
    if sa.make_url(plan.target_url).get_backend_name() == "sqlite":
        if asked is not None and asked > 1:
            log.info("a SQLite target takes one writer: rebuilding in one process")
        return 1
    if asked is None:
        cores = min(usable_cores(), MOST_WORKERS)
        asked = min(cores, max(1, plan.events // EVENTS_PER_WORKER))
    return max(1, min(asked, numbers))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, within a cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = cores or os.cpu_count() or 1
    try:  # cgroup v2: "max 100000", or "200000 100000" for two cores' worth
        quota, period = Path(_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max" or int(period) <= 0:
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def rebuild(
    settings: Settings,
    plan: RebuildPlan,
    *,
    workers: int | None = None,
    on_batch: Callable[[BatchOutcome], None] | None = None,
    stop: threading.Event | None = None,
) -> RunStats:
    """Fill ``plan.target_url`` with everything committed up to ``plan.as_of``, then stop.

    ``workers``: processes sharing the partitions (:func:`workers_for` when None).
    ``stop``, when set, ends the rebuild early (the new database then holds part of it).
    """
    count = workers_for(plan, workers)
    log.info(
        "rebuilding %s as of %s into %s: %d offsets to read, %d %s",
        plan.target,
        plan.as_of.isoformat(),
        describe_url(plan.target_url),
        plan.events,
        count,
        "process" if count == 1 else "processes",
    )
    if count == 1:
        return run_share(settings, plan.stop, stop or threading.Event(), on_batch, plan.target)
    return run_shares(
        settings,
        shares_of(plan.stop, count),
        functools.partial(run_share, target=plan.target),
        on_batch=on_batch,
        stop=stop,
    )


def run_share(
    settings: Settings,
    stop_at: StopAt,
    stop: threading.Event,
    on_batch: Callable[[BatchOutcome], None] | None,
    target: str,
) -> RunStats:
    """The bounded consumer runtime over the partitions of ``stop_at`` (all, or a share)."""
    runtime = ConsumerRuntime(
        settings, target_named(target), stop_at=stop_at, on_batch=on_batch, stop=stop
    )
    return runtime.run()
