"""A refresh applied in parts against a real broker and PostgreSQL (consumers.streaming).

The thresholds are lowered so that a refresh of a few hundred events is applied in
parts inside one open transaction, as one of a million would be. Batch-consistent
apply holds: after every part, the target shows nothing of the refresh; once it is
whole it commits at once (one sync-log entry), and the target equals the source.
A member that loses its partitions in the middle (a second member joins the group)
rolls its open transaction back: nothing is applied twice, nothing is lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from consumers import offsets, streaming, sync_log, target_named
from consumers import runtime as runtime_module
from consumers.assembly import Assembler, Batch
from consumers.batch_apply import OpenBatch
from consumers.ownership import Ownership
from consumers.runtime import ConsumerRuntime
from consumers.streaming import Streaming
from queuestream.databases import create_engine
from tests.helpers import wait_for
from tests.integration.pipeline import Pipeline, assert_ranges_disjoint, run_in_thread

#: Bounds of the waits below (seconds).
APPLIED_TIMEOUT = 90
JOIN_TIMEOUT = 30  # seconds for a second member to subscribe
STOP_TIMEOUT = 30

TARGETS = ["accounting", "shipping"]


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 40 events once 60 are held, read 25 at a time (not a refresh per read)."""
    monkeypatch.setattr(streaming, "OPEN_AT", 60)
    monkeypatch.setattr(streaming, "PART", 40)
    monkeypatch.setattr(runtime_module, "_CONSUME_BATCH", 25)


@pytest.mark.parametrize("target", TARGETS)
def test_parts_stay_invisible_until_the_refresh_commits_whole(
    pipeline: Pipeline,
    postgres_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    small_parts: None,
    target: str,
) -> None:
    url = postgres_database(target)
    pipeline.simulate(400)
    published = [r.refresh_id for r in pipeline.refresh()]
    pipeline.simulate(200)
    published += [r.refresh_id for r in pipeline.refresh()]
    reader = create_engine(url)
    seen: list[tuple[int, int]] = []  # per part: (entries in the sync log, stored offsets)
    apply_part = OpenBatch.apply

    def watched(self: OpenBatch, part: Batch) -> None:
        apply_part(self, part)
        with reader.connect() as conn:
            seen.append(
                (
                    len(sync_log.read(conn, target)),
                    len(offsets.stored_offsets(conn, target)),
                )
            )
        rows = _rows(reader, target)
        assert rows == committed[-1], "a part became visible before its refresh was whole"

    committed = [0]

    def on_batch(_: object) -> None:
        committed.append(_rows(reader, target))

    monkeypatch.setattr(OpenBatch, "apply", watched)
    runtime = pipeline.runtime(target, url)
    runtime.on_batch = on_batch
    stats = runtime.run()
    reader.dispose()

    parts = len(seen) - stats.batches  # commit() applies the last part too
    assert parts >= 2, f"the refreshes were not applied in parts: {seen}"
    assert seen[0] == (0, 0), "the first part committed nothing"
    log = Counter(e["refresh_id"] for e in pipeline.sync_log(target, url))
    assert set(log) <= set(published) and log, f"refreshes applied: {log}"
    assert max(log.values()) == 1, "a refresh applied twice"
    assert pipeline.verify(target, url).ok


def _rows(engine: sa.Engine, target: str) -> int:
    """Rows in the target's tables (what a reader sees committed)."""
    with engine.connect() as conn:
        return sum(
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in target_named(target).metadata.tables.values()
        )


def test_a_member_that_loses_its_partitions_mid_refresh_rolls_back_and_loses_nothing(
    pipeline: Pipeline,
    postgres_database: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    small_parts: None,
) -> None:
    url = postgres_database("accounting")
    pipeline.simulate(600)
    pipeline.refresh()
    settings = pipeline.settings(target_url=url)
    members: list[tuple[ConsumerRuntime, threading.Thread, list[BaseException]]] = []
    stop = threading.Event()

    def join() -> None:
        runtime = ConsumerRuntime(settings, target_named("accounting"), stop=stop)
        members.append((runtime, *run_in_thread(runtime)))

    take = Assembler.take
    taken = [0]
    join_group = Ownership.join
    joined: list[int] = []
    second_joined = threading.Event()

    def watched_join(self: Ownership, consumer: Any) -> None:
        join_group(self, consumer)
        joined.append(1)
        if len(joined) == 2:
            second_joined.set()

    def take_then_someone_joins(self: Assembler, refresh_ids: Any) -> Batch:
        taken[0] += 1
        if taken[0] == 2:  # the first member is in the middle of the refresh
            join()
        elif taken[0] > 2:
            # The refresh is not whole before the group rebalances: no part more until
            # the second member has subscribed (its start took longer than the rest of
            # the refresh on a loaded machine), then a pause between parts until the
            # first member has rolled back, in which it polls and so takes part in the
            # rebalance (with 0.3 s pauses the refresh once ended first, in a full run).
            second_joined.wait(JOIN_TIMEOUT)
            if not rolled_back:
                time.sleep(1.0)
        return take(self, refresh_ids)

    abandon = Streaming.abandon
    rolled_back: list[bool] = []

    def watched_abandon(self: Streaming) -> None:
        if self.active:
            rolled_back.append(True)
        abandon(self)

    monkeypatch.setattr(Assembler, "take", take_then_someone_joins)
    monkeypatch.setattr(Streaming, "abandon", watched_abandon)
    monkeypatch.setattr(Ownership, "join", watched_join)
    join()
    try:

        def applied() -> bool:
            for _, thread, errors in members:
                assert not errors, f"a member failed: {errors!r}"
                assert thread.is_alive()
            return len(members) == 2 and pipeline.verify("accounting", url).ok

        wait_for(
            applied,
            timeout=APPLIED_TIMEOUT,
            interval=0.5,
            message="both members applied the refresh (verify)",
            ignore=(sa.exc.DBAPIError,),
        )
    finally:
        stop.set()
        for runtime, thread, _ in members:
            thread.join(STOP_TIMEOUT)
            runtime.engine.dispose()
    assert all(not errors for _, _, errors in members)
    assert rolled_back, "no member rolled an open transaction back"
    assert_ranges_disjoint(pipeline.sync_log("accounting", url))
