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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from consumers import offsets, target_named
from consumers.runtime import BatchOutcome, ConsumerRuntime, RunStats, StopAt
from queuestream.databases import create_engine, describe_url
from queuestream.errors import ConfigurationError
from queuestream.kafka_clients import admin_client, batches_topic, ensure_topics
from queuestream.kafka_offsets import log_bounds, offsets_at, partitions_of, to_ms
from queuestream.settings import Settings
from queuestream.tables import topic_for

__all__ = ["RebuildPlan", "plan_rebuild", "rebuild"]

log = logging.getLogger(__name__)


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
        with engine.connect() as conn:
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


def rebuild(
    settings: Settings,
    plan: RebuildPlan,
    *,
    on_batch: Callable[[BatchOutcome], None] | None = None,
) -> RunStats:
    """Fill ``plan.target_url`` with everything committed up to ``plan.as_of``, then stop."""
    log.info(
        "rebuilding %s as of %s into %s: %d offsets to read",
        plan.target,
        plan.as_of.isoformat(),
        describe_url(plan.target_url),
        plan.events,
    )
    runtime = ConsumerRuntime(
        settings, target_named(plan.target), stop_at=plan.stop, on_batch=on_batch
    )
    return runtime.run()
