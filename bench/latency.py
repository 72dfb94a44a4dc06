"""Freshness figures: when a refresh started (from its id), and row-weighted percentiles.

A refresh id begins with the wall-clock time the producer took it, in UTC to the
microsecond (``producer/ids.py``: ``20261123T101500123456Z-3f9a1c2b``), the first
thing the producer records of a refresh: :func:`refresh_started` reads it back.
:func:`weighted_percentiles` gives every row the latency of the refresh (the
sync-log entry) that carried it, so a refresh of 10,000 rows counts 10,000 times
and an empty one not at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from bench.errors import BenchError

__all__ = ["PERCENTILES", "refresh_started", "weighted_percentiles"]

#: The percentiles every freshness figure reports (with the maximum).
PERCENTILES = (50.0, 95.0, 99.0)

_ID_TIME = "%Y%m%dT%H%M%S%fZ"


def refresh_started(refresh_id: str) -> datetime:
    """The time (aware, UTC) in ``refresh_id``, e.g. ``20261123T101500123456Z-3f9a1c2b``."""
    stamp, _, _ = refresh_id.partition("-")
    try:
        return datetime.strptime(stamp, _ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        msg = (
            f"refresh id {refresh_id!r} does not start with a time like "
            "20261123T101500123456Z (producer/ids.py): was it written by queuestream's producer?"
        )
        raise BenchError(msg) from None


def weighted_percentiles(
    samples: Iterable[tuple[float, int]], percentiles: Sequence[float] = PERCENTILES
) -> dict[str, float] | None:
    """``{"p50": ..., "p95": ..., "p99": ..., "max": ...}`` of (value, weight) samples.

    A percentile is the smallest value whose cumulative weight reaches that share of
    the total (nearest rank, as if each sample were repeated ``weight`` times).
    Samples of weight 0 count for nothing; None when no weight is left.
    """
    given = list(samples)
    negative = [s for s in given if s[1] < 0]
    if negative:
        msg = f"sample {negative[0]} has a negative weight: weights are row counts"
        raise BenchError(msg)
    weighted = sorted(s for s in given if s[1] > 0)
    total = sum(weight for _, weight in weighted)
    if not total:
        return None
    found: dict[str, float] = {}
    for p in percentiles:
        rank = max(1, math.ceil(total * p / 100))
        seen = 0
        for value, weight in weighted:
            seen += weight
            if seen >= rank:
                found[f"p{p:g}"] = value
                break
    found["max"] = weighted[-1][0]
    return found
