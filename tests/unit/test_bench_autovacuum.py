"""bench/autovacuum.py: samples of maintenance become spans; a slow refresh meets them or not."""

from __future__ import annotations

from bench.autovacuum import EVERY, merge_spans, overlapping


def test_samples_close_together_make_one_span_and_a_gap_starts_another() -> None:
    seen = [10.0, 10.2, 10.4, 10.6, 14.0, 14.2, 30.0]
    assert merge_spans(reversed(seen)) == [(10.0, 10.6), (14.0, 14.2), (30.0, 30.0)]
    assert merge_spans([]) == []


def test_a_refresh_overlaps_the_databases_maintained_while_it_ran() -> None:
    spans = {"source": [(100.0, 101.0)], "accounting": [(110.0, 110.0)], "shipping": []}
    assert overlapping(spans, 100.5, 102.0) == ["source"]
    assert overlapping(spans, 99.0, 111.0) == ["accounting", "source"]
    # a span is widened by one sampling interval: a sample just after the refresh ended
    # may belong to a run that started while it was still going
    assert overlapping(spans, 101.0 + EVERY / 2, 105.0) == ["source"]
    assert overlapping(spans, 109.0, 110.0 - EVERY / 2) == ["accounting"]
    assert overlapping(spans, 102.0, 109.0) == []
    assert overlapping(spans, 120.0, 121.0) == []
