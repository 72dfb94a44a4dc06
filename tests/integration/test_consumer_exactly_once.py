"""Promise 3 against a real broker: the effect in a target is exactly once.

Applied rows and consumed offsets commit in one target transaction; a redelivered
or stale event changes nothing; a crash between the target commit and the Kafka
commit neither loses nor repeats anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer

from consumers import offsets, target_named
from consumers.ownership import Ownership
from queuestream.databases import create_engine
from queuestream.tables import topic_for
from tests.helpers import wait_for
from tests.integration.kafka_readback import committed_messages, located
from tests.integration.pipeline import Pipeline, group_offsets

TARGETS = ["accounting", "shipping"]


def _snapshot(url: str, target: str) -> dict[str, list[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = {}
            for name, table in target_named(target).metadata.tables.items():
                found[name] = [
                    tuple(r)
                    for r in conn.execute(
                        sa.select(table).order_by(*table.primary_key.columns or table.columns)
                    )
                ]
            return found
    finally:
        engine.dispose()


def _republish(bootstrap: str, unique: str, topics: list[str]) -> int:
    """Publish every committed event of ``topics`` again, as it was, in one transaction."""
    messages = committed_messages(bootstrap, topics)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"{unique}-redeliver", "linger.ms": 5}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for message in messages:
        topic, partition, _ = located(message)
        producer.produce(topic, key=message.key(), value=message.value(), partition=partition)
    producer.commit_transaction(30)
    return len(messages)


@pytest.mark.parametrize("target", TARGETS)
def test_redelivered_and_stale_events_change_nothing(
    pipeline: Pipeline, kafka_bootstrap: str, unique: str, tmp_path: Path, target: str
) -> None:
    url = f"sqlite:///{tmp_path / f'{target}.db'}"
    pipeline.simulate(300)
    pipeline.refresh()
    pipeline.simulate(300)  # newer versions of many of the same rows
    pipeline.refresh()
    first = pipeline.consume(target, url)
    assert first.rows > 0
    assert pipeline.verify(target, url).ok
    before = _snapshot(url, target)

    # Every event once more: the first refresh's are now stale, the second's duplicates.
    topics = [topic_for(unique, t) for t in target_named(target).tables]
    again = _republish(kafka_bootstrap, unique, topics)
    stats = pipeline.consume(target, url)

    assert stats.stale == again, "every redelivered event is counted as changing nothing"
    assert stats.rows == 0
    assert _snapshot(url, target) == before
    assert pipeline.verify(target, url).ok


class Crash(Exception):
    """Stands for the process dying right after the target committed."""


def test_a_crash_between_the_target_commit_and_the_kafka_commit_repeats_nothing(
    pipeline: Pipeline,
    kafka_bootstrap: str,
    unique: str,
    postgres_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = postgres_database("accounting")
    pipeline.simulate(300)
    pipeline.refresh()
    runtime = pipeline.runtime("accounting", url)
    group = runtime.group
    topics = list(runtime.tables)

    def crash(_self: Ownership, applied: dict[tuple[str, int], int]) -> None:
        if applied:
            raise Crash

    monkeypatch.setattr(Ownership, "commit", crash)
    with pytest.raises(Crash):
        runtime.run()
    monkeypatch.undo()

    engine = create_engine(url)
    with engine.connect() as conn:
        stored = offsets.stored_offsets(conn, "accounting")
    assert stored, "the target committed the batch"
    assert group_offsets(kafka_bootstrap, group, topics, 3) == {}, "Kafka never heard of it"
    applied = [e["refresh_id"] for e in pipeline.sync_log("accounting", url)]

    pipeline.simulate(200)
    later = pipeline.refresh()
    stats = pipeline.consume("accounting", url)

    assert stats.skipped_applied == 0, "resumed from the target's offsets, not from Kafka's"
    log = [e["refresh_id"] for e in pipeline.sync_log("accounting", url)]
    assert Counter(log).most_common(1)[0][1] == 1, "no refresh applied twice"
    assert log == applied + [r.refresh_id for r in later]
    assert pipeline.verify("accounting", url).ok
    with engine.connect() as conn:
        stored = offsets.stored_offsets(conn, "accounting")
    engine.dispose()
    wait_for(
        lambda: group_offsets(kafka_bootstrap, group, topics, 3) == stored,
        timeout=15,
        message="the group's offsets in Kafka catch up with the target's",
    )
