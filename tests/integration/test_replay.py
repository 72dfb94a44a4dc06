"""Promise 7, replay: a consumer group moved to a time, the earliest or given offsets.

Against the real broker and the real command. The group offsets written are read
back with Kafka's own ``kafka-consumer-groups`` (the kafka-tools jar), the target's
stored offsets from its database, and the expected offsets are looked up with a
plain consumer's offsets_for_times, not with queuestream's code.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from queuestream.databases import create_engine
from tests.helpers import cli_env, run_cli, wait_for
from tests.integration.kafka_readback import committed_messages, located
from tests.integration.pipeline import Pipeline, run_in_thread, stored_offsets
from tests.services import consumer_group_offsets

ACCOUNTING_TABLES = ("customers", "orders", "order_details", "payments")


def _cli(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), cli_env(pipe.bootstrap, pipe.prefix))


def _partitions(pipe: Pipeline) -> list[tuple[str, int]]:
    count = pipe.settings().partitions
    return [(f"{pipe.prefix}.{t}", p) for t in ACCOUNTING_TABLES for p in range(count)]


def _offsets_for_time(pipe: Pipeline, moment: datetime) -> dict[tuple[str, int], int]:
    """First offset stamped at or after ``moment``, else the log end (read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": pipe.bootstrap,
            "group.id": f"{pipe.prefix}-probe",
            "isolation.level": "read_committed",
        }
    )
    try:
        ms = int(moment.timestamp() * 1000)
        wanted = [TopicPartition(t, p, ms) for t, p in _partitions(pipe)]
        found = {}
        for tp in consumer.offsets_for_times(wanted, timeout=10):
            if tp.offset >= 0:
                found[(tp.topic, tp.partition)] = tp.offset
            else:
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                found[(tp.topic, tp.partition)] = high
        return found
    finally:
        consumer.close()


def _three_refreshes(pipe: Pipeline) -> datetime:
    """Publish three refreshes; returns a moment between the second and the third."""
    pipe.simulate(60)
    pipe.refresh()
    pipe.simulate(60)
    pipe.refresh()
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    pipe.simulate(60)
    pipe.refresh()
    return middle


@pytest.mark.slow
def test_replay_to_datetime_moves_group_and_target(pipeline: Pipeline, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'accounting.db'}"
    group = pipeline.settings().group_for("accounting")
    middle = _three_refreshes(pipeline)
    first = pipeline.consume("accounting", target)
    assert first.refreshes == 3
    before = consumer_group_offsets(pipeline.bootstrap, group)
    expected = _offsets_for_time(pipeline, middle)
    assert any(before[p] != expected[p] for p in expected), "the third refresh moved nothing"

    # Caught up, the group sits below the log end (commit markers): nothing to skip there.
    ahead = _cli(
        pipeline, "replay", "--group", group, "--to-datetime", "2999-01-01T00:00Z", "--json"
    )
    assert ahead.returncode == 0, ahead.stderr
    planned_ahead = json.loads(ahead.stdout)
    assert any(r["new_offset"] > r["group_offset"] for r in planned_ahead["partitions"])
    assert planned_ahead["skipped_events"] == 0

    # Dry run: the plan, and nothing moves.
    args = ["replay", "--group", group, "--to-datetime", middle.isoformat(), "--target", target]
    dry = _cli(pipeline, *args, "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["executed"] is False
    assert plan["target_names"] == ["accounting"]
    planned = {(r["topic"], r["partition"]): r for r in plan["partitions"]}
    assert set(planned) == set(expected)
    for partition, offset in expected.items():
        assert planned[partition]["new_offset"] == offset
        assert planned[partition]["group_offset"] == before.get(partition)
    assert consumer_group_offsets(pipeline.bootstrap, group) == before

    # Execute: Kafka's own tool reads the new group offsets; the target holds them too.
    done = _cli(pipeline, *args, "--execute")
    assert done.returncode == 0, done.stderr
    assert f"moved {len(expected)} partitions" in done.stdout
    assert consumer_group_offsets(pipeline.bootstrap, group) == expected
    stored = stored_offsets(target, "accounting")
    assert {p: stored[p] for p in expected} == expected

    # The consumer resumes from there: it reads the third refresh again, all stale.
    again = pipeline.consume("accounting", target)
    assert again.rows == 0
    assert again.stale > 0
    assert pipeline.verify("accounting", target).ok


def test_replay_to_earliest_restores_rows_a_target_lost(pipeline: Pipeline, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'accounting.db'}"
    group = pipeline.settings().group_for("accounting")
    pipeline.simulate(80)
    pipeline.refresh()
    pipeline.consume("accounting", target)
    engine = create_engine(target, writer=True)
    with engine.begin() as conn:
        lost = conn.execute(sa.text("DELETE FROM invoice_lines")).rowcount
    engine.dispose()
    assert lost > 0
    assert not pipeline.verify("accounting", target).ok

    done = _cli(
        pipeline, "replay", "--group", group, "--to-earliest", "--target", target, "--execute"
    )
    assert done.returncode == 0, done.stderr
    for partition, offset in consumer_group_offsets(pipeline.bootstrap, group).items():
        assert offset == 0, partition
    stats = pipeline.consume("accounting", target)
    assert stats.rows >= lost
    assert pipeline.verify("accounting", target).ok


@pytest.mark.slow
def test_replay_to_offsets_file_without_target(pipeline: Pipeline, tmp_path: Path) -> None:
    group = f"{pipeline.prefix}-downstream"
    pipeline.simulate(60)
    pipeline.refresh()
    orders = f"{pipeline.prefix}.orders"
    file = tmp_path / "offsets.csv"
    file.write_text(f"# topic,partition,offset\n{orders},0,1\n{orders},1,2\n{orders},2,999999\n")
    done = _cli(
        pipeline, "replay", "--group", group, "--to-offsets", str(file), "--execute", "--json"
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    high = {(r["topic"], r["partition"]): r["high"] for r in plan["partitions"]}
    assert consumer_group_offsets(pipeline.bootstrap, group) == {
        (orders, 0): 1,
        (orders, 1): 2,
        (orders, 2): high[(orders, 2)],  # beyond the log end: clamped to it
    }

    # A forward move counts the events it would skip; commit markers are not events.
    args = ["replay", "--group", group, "--to-datetime", "2999-01-01T00:00Z", "--topics", orders]
    ahead = _cli(pipeline, *args, "--json")
    assert ahead.returncode == 0, ahead.stderr
    starts = {0: 1, 1: 2, 2: high[(orders, 2)]}
    unread = [
        (partition, offset)
        for _, partition, offset in map(located, committed_messages(pipeline.bootstrap, [orders]))
        if offset >= starts[partition]
    ]
    assert unread
    assert json.loads(ahead.stdout)["skipped_events"] == len(unread)

    # --topics picks lines out of a file that names other topics too.
    payments = f"{pipeline.prefix}.payments"
    file.write_text(f"{orders},0,0\n{payments},0,0\n{payments},1,0\n")
    args = ["replay", "--group", group, "--to-offsets", str(file), "--topics", "payments"]
    done = _cli(pipeline, *args, "--execute")
    assert done.returncode == 0, done.stderr
    assert consumer_group_offsets(pipeline.bootstrap, group) == {
        (orders, 0): 1,
        (orders, 1): 2,
        (orders, 2): high[(orders, 2)],
        (payments, 0): 0,
        (payments, 1): 0,
    }


def test_replay_refuses_a_group_with_active_members(pipeline: Pipeline, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'accounting.db'}"
    group = pipeline.settings().group_for("accounting")
    pipeline.simulate(40)
    pipeline.refresh()
    runtime = pipeline.runtime("accounting", target)
    runtime.until_idle = False
    thread, errors = run_in_thread(runtime)
    try:
        wait_for(lambda: runtime.stats.refreshes >= 1, timeout=60, message="the member applied")
        before = consumer_group_offsets(pipeline.bootstrap, group)
        stored_before = stored_offsets(target, "accounting")
        assert any(stored_before.values())
        args = ["replay", "--group", group, "--to-earliest", "--target", target, "--execute"]
        refused = _cli(pipeline, *args)
        assert refused.returncode == 1
        assert "active member" in refused.stderr and "--force" in refused.stderr
        forced = _cli(pipeline, *args, "--force")
        assert forced.returncode == 1
        assert "Kafka refused" in forced.stderr
        assert consumer_group_offsets(pipeline.bootstrap, group) == before
        assert stored_offsets(target, "accounting") == stored_before
    finally:
        runtime.stop.set()
        thread.join(timeout=60)
    assert not errors
