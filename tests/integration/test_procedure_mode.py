"""Procedure mode on PostgreSQL: the source's own ``CALL queue.refresh()`` fills the queue
tables (Exigo's ``exec queue.Refresh``), queuestream publishes them.

* the first refresh takes the last 24 hours, the next one only what changed since;
* ``since`` re-publishes everything from a date once (op ``r``), then normal refreshes
  resume;
* a crash after the source's refresh and before publishing loses nothing: the next
  run republishes the pending snapshot first (``recovered``), then refreshes again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from producer.queue_procedure import install_queue_procedure
from producer.refresh import Refresher, RefreshResult
from producer.simulator import Simulator
from producer.source_reader import FrozenSnapshot, SourceReader
from queuestream.databases import create_engine
from queuestream.errors import RetriableError
from queuestream.settings import Settings
from queuestream.tables import TABLES
from tests.helpers import producer_settings
from tests.integration.kafka_readback import Change, committed_changes
from tests.integration.source_versions import assert_exactly_once, source_versions

UTC_ZONE = ZoneInfo("UTC")


def _now() -> datetime:
    """Naive UTC, as the source stamps."""
    return datetime.now(UTC).replace(tzinfo=None)


class Source:
    """A PostgreSQL sync database with an Exigo-like queue.refresh procedure."""

    def __init__(self, url: str) -> None:
        database = make_url(url).database
        self.engine = create_engine(url, writer=True)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # localtimestamp in the procedure must be the zone the source stamps in (UTC).
            conn.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET timezone TO 'UTC'")
        self.engine.dispose()
        self.seed = 0

    def simulate(self, actions: int, hours_ago: float = 0.0) -> None:
        self.seed += 1
        shift = timedelta(hours=hours_ago)
        Simulator(self.engine, UTC_ZONE, seed=self.seed, clock=lambda: _now() - shift).run(
            actions, per_transaction=50
        )

    def install(self) -> None:
        install_queue_procedure(self.engine)

    def call_refresh(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("CALL queue.refresh()"))

    def versions(self, modified_from: datetime | None = None) -> set[Change]:
        return source_versions(self.engine, modified_from)

    def close(self) -> None:
        self.engine.dispose()


def _settings(url: str, bootstrap: str, prefix: str) -> Settings:
    return producer_settings(
        url,
        bootstrap,
        prefix,
        refresh_mode="procedure",
        refresh_statement="CALL queue.refresh()",
        refresh_since_statement="CALL queue.refresh(:since)",
    )


def _refresh(settings: Settings, since: datetime | None = None) -> list[RefreshResult]:
    """One run of a freshly started producer."""
    refresher = Refresher(settings)
    try:
        return refresher.refresh(since)
    finally:
        refresher.close()


def _published(
    bootstrap: str, prefix: str
) -> tuple[Counter[Change], dict[str, Counter[Change]], dict[str, Counter[str]]]:
    """All committed changes, the changes per refresh id, and the ops per refresh id."""
    everything, values = committed_changes(bootstrap, prefix)
    keys = {t.name: t.key for t in TABLES}
    table_source = {t.name: t.source for t in TABLES}
    per_refresh: dict[str, Counter[Change]] = defaultdict(Counter)
    ops: dict[str, Counter[str]] = defaultdict(Counter)
    for table, _, value in values:
        after: dict[str, Any] = value["after"]
        refresh_id = value["source"]["refresh_id"]
        # The rows read from queue.* are images of the sync tables: named after those.
        source = value["source"]
        assert (source["schema"], source["table"]) == ("public", table_source[table])
        change = (table, tuple(after[k] for k in keys[table]), after["ModifiedDate"])
        per_refresh[refresh_id][change] += 1
        ops[refresh_id][value["op"]] += 1
    return everything, per_refresh, ops


def _once(changes: set[Change]) -> Counter[Change]:
    return Counter(dict.fromkeys(changes, 1))


def test_first_refresh_takes_24_hours_then_only_new_changes(
    postgres_url: str, kafka_bootstrap: str, unique: str
) -> None:
    source = Source(postgres_url)
    source.simulate(150, hours_ago=30)  # older than the first window
    source.simulate(150)
    source.install()
    settings = _settings(postgres_url, kafka_bootstrap, unique)

    day_ago = _now() - timedelta(hours=24)
    first_expected = source.versions(modified_from=day_ago)
    assert 0 < len(first_expected) < len(source.versions())
    [first] = _refresh(settings)
    assert not first.recovered
    assert first.mode == "procedure"

    between = _now()
    source.simulate(60)
    second_expected = source.versions(modified_from=between)
    [second] = _refresh(settings)  # a restarted producer: nothing pending, only new changes
    assert not second.recovered
    assert _refresh(settings) == []  # nothing changed since

    everything, per_refresh, _ = _published(kafka_bootstrap, unique)
    assert per_refresh[first.refresh_id] == _once(first_expected)
    assert first.events == len(first_expected)
    assert per_refresh[second.refresh_id] == _once(second_expected)
    assert second.events == len(second_expected)
    assert set(per_refresh) == {first.refresh_id, second.refresh_id}
    assert_exactly_once(everything, source.versions(modified_from=day_ago))
    source.close()


def test_since_republishes_once_then_normal_refreshes_resume(
    postgres_url: str, kafka_bootstrap: str, unique: str
) -> None:
    source = Source(postgres_url)
    source.simulate(100, hours_ago=30)
    source.simulate(100)
    source.install()
    settings = _settings(postgres_url, kafka_bootstrap, unique)
    [first] = _refresh(settings)

    since = datetime.now(UTC) - timedelta(hours=48)
    resync_expected = source.versions(modified_from=since.replace(tzinfo=None))
    [resync] = _refresh(settings, since=since)
    assert not resync.recovered

    between = _now()
    source.simulate(40)
    after_expected = source.versions(modified_from=between)
    [after] = _refresh(settings)

    _, per_refresh, ops = _published(kafka_bootstrap, unique)
    # The override re-published everything since the date, older than 24 hours included.
    assert per_refresh[resync.refresh_id] == _once(resync_expected)
    assert len(resync_expected) > first.events
    assert set(ops[resync.refresh_id]) == {"r"}, ops[resync.refresh_id]
    # Then the normal behaviour resumes: only what changed since the override.
    assert per_refresh[after.refresh_id] == _once(after_expected)
    assert "r" not in ops[after.refresh_id]
    assert "r" not in ops[first.refresh_id]
    source.close()


def test_crash_between_source_refresh_and_publishing_loses_nothing(
    postgres_url: str, kafka_bootstrap: str, unique: str
) -> None:
    source = Source(postgres_url)
    source.simulate(150)
    source.install()
    settings = _settings(postgres_url, kafka_bootstrap, unique)
    [first] = _refresh(settings)
    assert first.events > 0

    # The source's refresh ran and committed, then the producer died before publishing.
    pending_from = _now()
    source.simulate(80)
    source.call_refresh()
    pending_expected = source.versions(modified_from=pending_from)
    # More changes arrive while the producer is down.
    later_from = _now()
    source.simulate(80)
    later_expected = source.versions(modified_from=later_from)

    results = _refresh(settings)
    assert [r.recovered for r in results] == [True, False]
    recovered, fresh = results
    assert _refresh(settings) == []  # a further restart republishes nothing

    everything, per_refresh, _ = _published(kafka_bootstrap, unique)
    # The pending snapshot is published as the source's refresh froze it.
    assert per_refresh[recovered.refresh_id] == _once(pending_expected)
    assert recovered.events == len(pending_expected)
    assert per_refresh[fresh.refresh_id] == _once(later_expected)
    assert set(per_refresh) == {first.refresh_id, recovered.refresh_id, fresh.refresh_id}
    assert_exactly_once(everything, source.versions())
    source.close()


@pytest.mark.parametrize("reader_process", [True, False], ids=["reader-process", "one-process"])
def test_queue_tables_changed_before_publishing_are_not_published_under_the_old_fingerprint(
    postgres_url: str,
    kafka_bootstrap: str,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    reader_process: bool,
) -> None:
    """The fingerprint is read in one snapshot and the rows in another (no snapshot waits
    on Kafka). If another process runs the refresh statement in between, the END marker
    would describe rows that were not published: the producer must notice, commit
    nothing, and publish the new queue tables under their own fingerprint."""
    source = Source(postgres_url)
    source.simulate(100)
    source.install()
    settings = _settings(postgres_url, kafka_bootstrap, unique).model_copy(
        update={"publish_attempts": 1, "reader_process": reader_process}
    )
    [first] = _refresh(settings)

    # A crash left a pending snapshot; then, between the producer's fingerprint of it and
    # its publishing, someone else runs the source's refresh again.
    source.simulate(50)
    source.call_refresh()
    real = SourceReader.frozen
    opened: list[int] = []
    between: list[datetime] = []

    @contextmanager
    def refreshed_between_snapshots(reader: SourceReader) -> Iterator[FrozenSnapshot]:
        # This process takes the fingerprint's snapshot first (the publishing one is the
        # row reader's, or this process's again): the refresh runs once it is released.
        with real(reader) as snapshot:
            yield snapshot
        opened.append(1)
        if len(opened) == 1:
            between.append(_now())
            source.simulate(30)
            source.call_refresh()

    monkeypatch.setattr(SourceReader, "frozen", refreshed_between_snapshots)
    with pytest.raises(RetriableError, match="queue tables changed"):
        _refresh(settings)
    _, per_refresh, _ = _published(kafka_bootstrap, unique)
    assert set(per_refresh) == {first.refresh_id}  # nothing of the failed attempt

    monkeypatch.setattr(SourceReader, "frozen", real)
    # The next cycle publishes what the queue tables hold now, under its own fingerprint
    # (what the other process's refresh replaced is the source's window, not ours to keep).
    results = _refresh(settings)
    assert results and results[0].recovered
    _, per_refresh, _ = _published(kafka_bootstrap, unique)
    assert per_refresh[results[0].refresh_id] == _once(source.versions(modified_from=between[0]))
    assert _refresh(settings) == []  # and nothing is pending any more
    source.close()
