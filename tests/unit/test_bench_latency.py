"""bench/latency.py: refresh start times from ids, row-weighted percentiles."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import BenchError
from bench.latency import refresh_started, weighted_percentiles
from producer.ids import new_refresh_id


def test_refresh_started_reads_the_time_in_the_id() -> None:
    assert refresh_started("20261123T101500123456Z-3f9a1c2b") == datetime(
        2026, 11, 23, 10, 15, 0, 123456, tzinfo=UTC
    )


def test_refresh_started_reads_what_the_producer_writes() -> None:
    before = datetime.now(UTC)
    started = refresh_started(new_refresh_id())
    assert before <= started <= datetime.now(UTC)


def test_refresh_started_names_an_id_it_cannot_read() -> None:
    with pytest.raises(BenchError, match="'sweep-1'"):
        refresh_started("sweep-1")


def test_every_row_counts_with_the_latency_of_its_refresh() -> None:
    # 98 rows at 0.1 s, one at 2.0 s, one at 3.0 s: p99 is the 99th row.
    figures = weighted_percentiles([(0.1, 98), (3.0, 1), (2.0, 1)])
    assert figures == {"p50": 0.1, "p95": 0.1, "p99": 2.0, "max": 3.0}


def test_a_big_refresh_outweighs_many_small_ones() -> None:
    figures = weighted_percentiles([(0.2, 1)] * 10 + [(1.4, 1000)])
    assert figures is not None
    assert figures["p50"] == 1.4


def test_empty_refreshes_count_for_nothing() -> None:
    assert weighted_percentiles([(9.0, 0)]) is None
    assert weighted_percentiles([]) is None
    assert weighted_percentiles([(9.0, 0), (0.5, 3)]) == {
        "p50": 0.5,
        "p95": 0.5,
        "p99": 0.5,
        "max": 0.5,
    }


def test_a_negative_weight_is_refused() -> None:
    with pytest.raises(BenchError, match="negative"):
        weighted_percentiles([(1.0, -1)])


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 50)), max_size=40))
def test_the_same_as_repeating_each_value_weight_times(samples: list[tuple[float, int]]) -> None:
    expanded = sorted(v for v, w in samples for _ in range(w))
    figures = weighted_percentiles(samples)
    if not expanded:
        assert figures is None
        return
    assert figures is not None
    for p in (50, 95, 99):
        rank = -(-len(expanded) * p // 100)  # ceil
        assert figures[f"p{p}"] == expanded[max(rank, 1) - 1]
    assert figures["max"] == expanded[-1]
