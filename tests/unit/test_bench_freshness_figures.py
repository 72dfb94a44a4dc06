"""bench/freshness_figures.py: refreshes read from real markers, latency per target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.freshness_figures import (
    Refresh,
    committed_seconds,
    cycle_seconds,
    decode_refreshes,
    sim_cpu_us_per_row,
    source_seconds,
    target_figures,
)
from queuestream.batches.markers import BeginMarker, encode_marker
from schemas.avro import AvroCodec

_START = datetime(2026, 12, 4, 21, 0, 0, tzinfo=UTC)


def _id(at: datetime, tail: str = "0000abcd") -> str:
    return f"{at:%Y%m%dT%H%M%S%fZ}-{tail}"


def _refresh(
    at: datetime, end_after: float, counts: dict[str, int], committed_after: float | None = None
) -> Refresh:
    end_ms = int((at + timedelta(seconds=end_after)).timestamp() * 1000)
    bound = at - timedelta(seconds=1.25)
    return Refresh(_id(at), "watermark", at, end_ms, None, bound, counts, committed_after)


def _entry(refresh: Refresh, rows: int, applied_after: float, duration_ms: int) -> dict[str, Any]:
    applied = refresh.started + timedelta(seconds=applied_after)
    return {
        "refresh_id": refresh.refresh_id,
        "rows_applied": rows,
        "applied_at": applied,
        "duration_ms": duration_ms,
        "committed_at": applied + timedelta(milliseconds=4),
    }


def test_refreshes_are_read_from_the_markers_the_producer_encodes() -> None:
    codec = AvroCodec("p")
    begin = BeginMarker(_id(_START), "watermark", _START - timedelta(seconds=1), _START)
    end = begin.end(
        counts={"orders": 3, "payments": 0}, op_counts={"orders.c": 3}, partition_counts={}
    )
    records = [
        (0, 0, None, encode_marker(codec, begin)),
        (1, 0, None, encode_marker(codec, end)),
        (2, 0, None, None),  # a tombstone is no marker
    ]
    [(refresh_id, refresh)] = decode_refreshes("p", records).items()
    assert refresh_id == begin.refresh_id
    assert refresh.started == _START
    assert refresh.end_ms == end.ts_ms
    assert refresh.events == 3
    assert refresh.window_end == _START
    assert refresh.carries(["orders"])
    assert not refresh.carries(["payments", "customers"])


def test_latency_is_start_to_commit_weighted_by_rows() -> None:
    slow = _refresh(_START, 0.5, {"orders": 100}, committed_after=0.56)
    fast = _refresh(_START + timedelta(seconds=2), 0.1, {"orders": 1})
    log = [_entry(slow, 99, 2.0, 300), _entry(fast, 1, 0.3, 50)]
    figures = target_figures({r.refresh_id: r for r in (slow, fast)}, log, commit_times=True)
    assert figures["refreshes"] == 2
    assert figures["rows"] == 100
    # 99 rows at 2.004 s outweigh the one row at 0.304 s
    assert figures["latency_seconds"] == {"p50": 2.004, "p95": 2.004, "p99": 2.004, "max": 2.004}
    assert figures["breakdown_p50_seconds"] == {
        "bound_age": 1.25,
        "refresh": 0.5,
        "end_to_apply": 1.2,  # applied 2.0 s in, less 0.3 s of apply, less the END at 0.5 s
        "kafka_commit": 0.06,  # of which: the END at 0.5 s, the commit acknowledged at 0.56 s
        "apply": 0.3,
        "apply_to_commit": 0.004,
    }


def test_the_slowest_refreshes_are_listed_with_their_parts() -> None:
    refreshes = [_refresh(_START + timedelta(seconds=i), 0.3, {"orders": 10}) for i in range(5)]
    after = [0.8, 2.5, 0.9, 1.7, 0.7]  # seconds from the start to the commit
    log = [_entry(r, 10, a, 200) for r, a in zip(refreshes, after, strict=True)]
    figures = target_figures({r.refresh_id: r for r in refreshes}, log, commit_times=False)
    slowest = figures["slowest"]
    assert [s["refresh_id"] for s in slowest] == [refreshes[i].refresh_id for i in (1, 3, 2)]
    assert slowest[0] == {
        "refresh_id": refreshes[1].refresh_id,
        "rows": 10,
        "events": 10,
        "latency": 2.5,
        "refresh": 0.3,
        "end_to_apply": 2.0,  # applied 2.5 s in, less 0.2 s of apply, less the END at 0.3 s
        "apply": 0.2,
    }


def test_without_commit_times_applied_at_is_the_commit() -> None:
    refresh = _refresh(_START, 0.5, {"orders": 10})
    figures = target_figures({refresh.refresh_id: refresh}, [_entry(refresh, 10, 1.0, 100)], False)
    assert figures["latency_seconds"]["max"] == 1.0
    assert figures["breakdown_p50_seconds"]["apply_to_commit"] is None


def test_only_measured_refreshes_with_rows_count() -> None:
    measured = _refresh(_START, 0.5, {"orders": 10})
    before_the_load = _refresh(_START - timedelta(seconds=30), 0.5, {"orders": 10})
    log = [
        _entry(before_the_load, 500, 9.0, 100),
        _entry(measured, 0, 5.0, 100),  # all stale: no row committed
        _entry(measured, 10, 1.0, 100),
    ]
    figures = target_figures({measured.refresh_id: measured}, log, commit_times=False)
    assert figures["refreshes"] == 1
    assert figures["rows"] == 10
    assert figures["latency_seconds"]["max"] == 1.0


def test_nothing_measured_gives_no_percentiles() -> None:
    figures = target_figures({}, [], commit_times=False)
    assert figures["rows"] == 0
    assert figures["latency_seconds"] is None


def test_the_refresh_cycle_is_the_median_gap_between_starts() -> None:
    starts = [_START + timedelta(seconds=s) for s in (0, 1.5, 3.0, 5.0)]
    refreshes = [_refresh(at, 0.1, {}) for at in reversed(starts)]
    assert cycle_seconds(refreshes) == 1.5
    assert cycle_seconds(refreshes[:1]) is None


def test_the_kafka_commit_is_read_from_the_producer_log() -> None:
    log = (
        "2026-12-04 21:41:02,113 INFO producer.refresh: refresh "
        "20261204T214101000000Z-0badf00d committed: 4096 events (orders 1000, order_details "
        "3096), 12 overlap duplicates skipped in 0.71s, watermark 2026-12-04T21:41:00+00:00\n"
        "2026-12-04 21:41:03,001 INFO producer.refresh: refresh "
        "20261204T214102500000Z-0badf00e committed: 0 events (no changes) in 0.05s, "
        "watermark 2026-12-04T21:41:01+00:00\n"
        "2026-12-04 21:41:03,002 WARNING producer.refresh: refresh x committed: soon\n"
    )
    assert committed_seconds(log) == {
        "20261204T214101000000Z-0badf00d": 0.71,
        "20261204T214102500000Z-0badf00e": 0.05,
    }


def test_the_source_time_covered_runs_from_the_first_window_to_the_last() -> None:
    first = _refresh(_START, 0.1, {"orders": 1})  # window end 1.25 s before its start
    later = _refresh(_START + timedelta(seconds=10), 0.1, {"orders": 1})
    first = Refresh(
        first.refresh_id,
        first.mode,
        first.started,
        first.end_ms,
        _START - timedelta(seconds=3),
        first.window_end,
    )
    assert source_seconds([later, first]) == 3 + 10 - 1.25
    assert source_seconds([later]) == 0.0  # no window start known


def test_the_simulators_cpu_a_row_tells_how_fast_the_machine_ran() -> None:
    # 0.25 of a core writing 10,000 rows a second: 25 µs a row
    assert sim_cpu_us_per_row(0.25, 10_000.0) == 25.0
    assert sim_cpu_us_per_row(0.31, 10_053.6) == 30.8
    assert sim_cpu_us_per_row(0.25, None) is None  # a simulator fell behind: no rate
    assert sim_cpu_us_per_row(0.25, 0.0) is None
