"""The figures of bench/freshness.py: the refreshes the batches topic holds, and per target
the row-weighted latency from a refresh's start to its commit, with its parts.

Kept apart from the run (processes, waits) so that the arithmetic reads on its own
and is tested without services. Times: the refresh's start from its id
(:func:`bench.latency.refresh_started`), its END marker's ``ts_ms`` (built when the
refresh's last event was sent, just before the Kafka commit), and per sync-log
entry ``applied_at`` (stamped at the end of the target transaction, just before
it commits), ``duration_ms`` (the apply) and, where PostgreSQL tracks them, the
transaction's commit time.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.latency import refresh_started, weighted_percentiles
from bench.readback import Record
from queuestream.batches.markers import BeginMarker, EndMarker, decode_marker
from schemas.avro import AvroCodec

__all__ = [
    "GOAL_P99_SECONDS",
    "Refresh",
    "committed_seconds",
    "cycle_seconds",
    "decode_refreshes",
    "sim_cpu_us_per_row",
    "source_seconds",
    "target_figures",
]

#: Issue 10, goal 4: the p99 of refresh start -> commit in a target.
GOAL_P99_SECONDS = 1.5
#: How many of a target's slowest applied refreshes the report lists, parts and all: with
#: a refresh a second, the p99 of a minute's rows is the latency of the worst one or two.
SLOWEST = 3


@dataclass(frozen=True)
class Refresh:
    """One committed refresh as its markers tell it."""

    refresh_id: str
    mode: str
    started: datetime  # from the refresh id
    end_ms: int  # the END marker's ts_ms: built once the last event was sent
    window_start: datetime | None = None
    window_end: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    #: Seconds from the start until Kafka acknowledged the commit: not in the markers
    #: (written before it); the producer logs it (:func:`committed_seconds`).
    committed_after: float | None = None

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    def carries(self, tables: Iterable[str]) -> bool:
        """Whether it has events of any of ``tables`` (contract names)."""
        return any(self.counts.get(t, 0) for t in tables)


def decode_refreshes(prefix: str, records: Iterable[Record]) -> dict[str, Refresh]:
    """The refreshes whose END is among ``records`` (committed messages of the batches topic)."""
    codec = AvroCodec(prefix)
    found = {}
    for _offset, _timestamp, _key, value in records:
        marker = decode_marker(codec, value)
        if isinstance(marker, BeginMarker) or marker is None:
            continue
        assert isinstance(marker, EndMarker)
        found[marker.refresh_id] = Refresh(
            marker.refresh_id,
            marker.mode,
            refresh_started(marker.refresh_id),
            marker.ts_ms,
            marker.window_start,
            marker.window_end,
            dict(marker.counts),
        )
    return found


#: The producer's INFO line once Kafka acknowledged a refresh (producer/refresh.py).
_COMMITTED = re.compile(r"refresh (\S+) committed: .* in (\d+(?:\.\d+)?)s, watermark")


def committed_seconds(producer_log: str) -> dict[str, float]:
    """Per refresh id, seconds from its start until Kafka acknowledged its commit.

    Read from the producer's log (its INFO line per refresh, timed from the moment
    the refresh id is taken): a diagnostic, to 10 ms; nothing contracted records it.
    """
    return {m.group(1): float(m.group(2)) for m in _COMMITTED.finditer(producer_log)}


def source_seconds(refreshes: list[Refresh]) -> float:
    """The source time the refreshes' windows cover, first start to last end."""
    starts = [r.window_start for r in refreshes if r.window_start is not None]
    ends = [r.window_end for r in refreshes if r.window_end is not None]
    if not starts or not ends:
        return 0.0
    return (max(ends) - min(starts)).total_seconds()


def cycle_seconds(refreshes: Iterable[Refresh]) -> float | None:
    """The median time from one refresh's start to the next one's."""
    starts = sorted(r.started for r in refreshes)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    return round(statistics.median(gaps), 3) if gaps else None


def sim_cpu_us_per_row(sim_cores: float, rows_per_second: float | None) -> float | None:
    """The simulators' CPU (µs) a row written: the same work in every run, so it says how
    fast the machine ran. On the 2-core machine of the README, in 30 runs of one night,
    the 10 at 29.1 µs or more all missed the goal, and 17 of the 20 below it met it."""
    if not rows_per_second:
        return None
    return round(sim_cores / rows_per_second * 1e6, 1)


def _rounded(figures: dict[str, float] | None) -> dict[str, float] | None:
    return None if figures is None else {k: round(v, 3) for k, v in figures.items()}


def target_figures(
    measured: dict[str, Refresh], log: list[dict[str, Any]], commit_times: bool
) -> dict[str, Any]:
    """Latency percentiles of one target (weighted by rows applied) and of their parts.

    ``log``: the target's sync-log rows (``refresh_id``, ``rows_applied``,
    ``applied_at``, ``duration_ms``, ``committed_at``); only those of ``measured``
    refreshes count. ``commit_times``: ``committed_at`` holds the commit time.
    """
    latency: list[tuple[float, int]] = []
    parts: dict[str, list[tuple[float, int]]] = {
        "bound_age": [],  # how far the window's end lay behind the start
        "refresh": [],  # start -> END built (rows read, encoded, sent)
        "end_to_apply": [],  # END built -> the apply began
        "kafka_commit": [],  # of which: END built -> Kafka acknowledged the commit
        "apply": [],
        "apply_to_commit": [],
    }
    refreshes = set()
    entries: list[dict[str, Any]] = []
    for entry in log:
        refresh = measured.get(entry["refresh_id"])
        rows = int(entry["rows_applied"])
        if refresh is None or rows <= 0:
            continue
        refreshes.add(refresh.refresh_id)
        start = refresh.started.timestamp()
        applied = entry["applied_at"].timestamp()
        committed = entry["committed_at"].timestamp() if commit_times else applied
        apply = entry["duration_ms"] / 1000
        sent = refresh.end_ms / 1000 - start  # start -> END built
        waited = applied - apply - refresh.end_ms / 1000  # END built -> the apply began
        latency.append((committed - start, rows))
        entries.append(
            {
                "refresh_id": refresh.refresh_id,
                "rows": rows,
                "events": refresh.events,
                "latency": committed - start,
                "refresh": sent,
                "end_to_apply": waited,
                "apply": apply,
            }
        )
        if refresh.window_end is not None:
            parts["bound_age"].append((start - refresh.window_end.timestamp(), rows))
        parts["refresh"].append((sent, rows))
        if refresh.committed_after is not None:
            parts["kafka_commit"].append((refresh.committed_after - sent, rows))
        parts["end_to_apply"].append((waited, rows))
        parts["apply"].append((apply, rows))
        if commit_times:
            parts["apply_to_commit"].append((committed - applied, rows))
    breakdown = {part: weighted_percentiles(samples) for part, samples in parts.items()}
    return {
        "refreshes": len(refreshes),
        "rows": sum(rows for _, rows in latency),
        "latency_seconds": _rounded(weighted_percentiles(latency)),
        "breakdown_p50_seconds": {
            part: round(f["p50"], 3) if f else None for part, f in breakdown.items()
        },
        "breakdown_p99_seconds": {
            part: round(f["p99"], 3) if f else None for part, f in breakdown.items()
        },
        "slowest": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}
            for entry in sorted(entries, key=lambda e: e["latency"], reverse=True)[:SLOWEST]
        ],
    }
