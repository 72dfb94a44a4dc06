"""What the source holds, as change identities, and the exactly-once check against Kafka."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from queuestream.sync_schema import Base
from queuestream.tables import TABLES
from tests.helpers import wait_for
from tests.integration.kafka_readback import Change, committed_changes

__all__ = ["assert_exactly_once", "latest_stamp", "source_versions", "wait_all_published"]

#: Seconds a producer under test may take to publish what the source holds.
CATCH_UP_TIMEOUT = 120


def source_versions(engine: sa.Engine, modified_from: datetime | None = None) -> set[Change]:
    """(table, key, ModifiedDate) of every row now in the source (source zone: UTC).

    ``modified_from`` (naive UTC) keeps only rows with ModifiedDate >= it.
    """
    found: set[Change] = set()
    with engine.connect() as conn:
        for spec in TABLES:
            table = Base.metadata.tables[spec.source]
            query = sa.select(*(table.c[k] for k in spec.key), table.c.ModifiedDate)
            if modified_from is not None:
                query = query.where(table.c.ModifiedDate >= modified_from)
            for *key, stamp in conn.execute(query):
                found.add((spec.name, tuple(key), stamp.replace(tzinfo=UTC)))
    return found


def wait_all_published(
    engine: sa.Engine, bootstrap: str, prefix: str, running: Callable[[], object]
) -> None:
    """Until every row version the source holds now is committed in Kafka under ``prefix``.

    ``running()`` raises (an AssertionError with the producer's log) when the producer
    under test has exited; topics or schemas not there yet count as "not yet".
    """
    wanted = source_versions(engine)

    def arrived() -> bool:
        running()
        published, _ = committed_changes(bootstrap, prefix, timeout=30)
        return wanted <= set(published)

    wait_for(
        arrived,
        timeout=CATCH_UP_TIMEOUT,
        interval=0.5,
        message="every source row version committed in Kafka",
        ignore=(AssertionError,),
    )


def latest_stamp(engine: sa.Engine) -> datetime:
    """The newest ModifiedDate in the source, aware UTC."""
    with engine.connect() as conn:
        stamps: list[datetime | None] = [
            conn.execute(
                sa.select(sa.func.max(Base.metadata.tables[s.source].c.ModifiedDate))
            ).scalar_one()
            for s in TABLES
        ]
    return max(s for s in stamps if s is not None).replace(tzinfo=UTC)


def assert_exactly_once(published: Counter[Change], source: set[Change]) -> None:
    """Every version the source holds now is in Kafka exactly once, and nothing is doubled.

    Kafka may also hold older versions of a key (published before a later update);
    those must be older than the source's current version of that key.
    """
    missing = source - set(published)
    duplicated = {c: n for c, n in published.items() if n > 1}
    current: dict[tuple[str, tuple[Any, ...]], datetime] = {(t, k): v for t, k, v in source}
    phantom = [
        c
        for c in published
        if c not in source and not ((c[0], c[1]) in current and c[2] < current[(c[0], c[1])])
    ]
    assert not missing, (
        f"{len(missing)} of {len(source)} source row versions never reached Kafka (committed), "
        f"e.g. {sorted(missing)[:3]}"
    )
    assert not duplicated, (
        f"{len(duplicated)} changes were committed more than once, "
        f"e.g. {sorted(duplicated.items())[:3]}"
    )
    assert not phantom, f"{len(phantom)} published changes match no source row, e.g. {phantom[:3]}"
