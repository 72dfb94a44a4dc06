"""``queuestream monitor``: topics, consumer groups and their lag, the last batch, dead letters.

``snapshot`` collects one snapshot from Kafka (the one place lag is computed),
``feed`` keeps collecting it in a thread, ``terminal`` and ``web`` show it.
"""

from __future__ import annotations

from queuestream.monitor.feed import FeedState, SnapshotFeed
from queuestream.monitor.snapshot import (
    Breach,
    LagLimits,
    Snapshot,
    SnapshotCollector,
    breaches,
)

__all__ = [
    "Breach",
    "FeedState",
    "LagLimits",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotFeed",
    "breaches",
]
