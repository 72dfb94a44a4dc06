"""``queuestream monitor``: topics, consumer groups and their lag, the last batch, dead letters.

``snapshot`` is the data (one snapshot, in dataclasses, and its JSON);
``collector`` collects one from Kafka with ``topics`` (figures per partition)
and ``lag`` (the one place lag is computed); ``alerts`` checks lag limits;
``feed`` keeps collecting in a thread, ``terminal`` and ``web`` show it
(``_connections`` bounds the page's connections, ``access`` decides who may read it).
"""

from __future__ import annotations

from queuestream.monitor.alerts import Breach, LagLimits, breaches
from queuestream.monitor.collector import SnapshotCollector
from queuestream.monitor.feed import FeedState, SnapshotFeed
from queuestream.monitor.snapshot import GroupInfo, Snapshot

__all__ = [
    "Breach",
    "FeedState",
    "GroupInfo",
    "LagLimits",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotFeed",
    "breaches",
]
