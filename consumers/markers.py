"""The END markers a consumer needs, followed in the batches topic beside the change topics.

A refresh's END marker says how many events it put on each partition of each
change topic. The consumer applies a refresh once it holds all of the events
on the partitions it owns, so a target never shows an order without its lines.

Markers are read with :class:`queuestream.batches.BatchesReader` (the one reader
of the batches topic), which does not start at the beginning: the first time a
refresh is needed it looks up, with Kafka's offsets-for-times, the first marker
written ``marker_margin_seconds`` before the event that needs it (END is written
after every event of its refresh, so it is found reading forward), and moves
back the same way when an older refresh is needed (after a rebalance or a
replay). What this module adds is the consumer's bookkeeping: which markers to
keep in memory, and when to look back. ``EndMarker`` is
:class:`queuestream.batches.EndMarker`, named here for the assembly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from queuestream.batches import BatchesReader, EndMarker
from queuestream.settings import Settings
from schemas.avro import AvroCodec

__all__ = ["EndMarker", "EndMarkers"]

log = logging.getLogger(__name__)

_KEEP = 100_000  # END markers kept in memory (about 3 days of refreshes every 3 s)


class EndMarkers:
    """Finds and keeps the END markers that pending refreshes need."""

    def __init__(
        self, settings: Settings, codec: AvroCodec, group: str, *, until_ms: int | None = None
    ) -> None:
        #: END markers stamped after this are ignored: their refreshes committed too late
        #: for a rebuild as of that moment (None: every marker counts).
        self.until_ms = until_ms
        #: The refreshes whose markers are still needed (set by the runtime): never pruned.
        self.needed: Callable[[], set[str]] = set
        self.keep = _KEEP
        self.margin_ms = int(settings.marker_margin_seconds * 1000)
        self.ends: dict[str, EndMarker] = {}
        self._newest = ""  # the latest refresh id among the markers read
        self._warned = False
        self._from_ms: int | None = None  # markers from this time on are being read
        self._reader = BatchesReader.open(settings, codec, f"{group}.markers")

    def need(self, event_ts_ms: int) -> None:
        """Make sure markers from ``event_ts_ms`` minus the margin on are read."""
        wanted = max(0, event_ts_ms - self.margin_ms)
        if self._from_ms is not None and self._from_ms <= wanted:
            return
        # Events of other partitions come a little out of time order: look back a second
        # margin, so that they do not each cost a look-up (a round trip to the broker).
        self._seek(max(0, wanted - self.margin_ms))

    def _seek(self, from_ms: int) -> None:
        self._reader.seek_time(from_ms)
        self._from_ms = from_ms

    def poll(self) -> int:
        """Read the markers that have arrived; returns how many END markers were new."""
        if self._from_ms is None:
            return 0
        found = 0
        while True:
            if len(self.ends) >= self.keep and not self._looking_back():
                self._prune()
                if len(self.ends) >= self.keep:
                    return found  # all still needed: read on once some are applied
            ends = self._reader.read(500)
            if ends is None:
                if not self._looking_back():
                    self._warned = False
                    self._prune()
                return found
            for end in ends:
                if self.until_ms is not None and end.timestamp_ms > self.until_ms:
                    continue
                if end.refresh_id not in self.ends:
                    found += 1
                # The overlap digests are the producer's alone, and can be megabytes.
                self.ends[end.refresh_id] = dataclasses.replace(end, overlap_seen=None)
                self._newest = max(self._newest, end.refresh_id)
            self._warn_when_far_back()

    def _looking_back(self) -> bool:
        """Is the marker of a refresh held missing while a later refresh's is in memory?

        Then :meth:`need` looked back for it (its events came after its marker was
        read and forgotten): the reader is on its way to it, and the refreshes held
        after it wait for it (:mod:`.assembly` applies none of them before it). Until
        it is read, nothing is pruned (pruning would move the reader's start past it,
        and its next event would look back again) and reading does not stop at the
        bound (nothing would ever be applied). Refresh ids start with their start
        time, so they tell a marker behind the reader from one not written yet, such as
        that of a refresh still running at a rebuild's moment.
        """
        missing = self.needed() - self.ends.keys()
        return bool(missing) and min(missing) < self._newest

    def _warn_when_far_back(self) -> None:
        if len(self.ends) < 2 * self.keep or self._warned or not self._looking_back():
            return
        self._warned = True
        missing = sorted(self.needed() - self.ends.keys())
        log.warning(
            "%d END markers in memory while looking for that of refresh %s, whose events "
            "are held: nothing after it on its partitions is applied until it is read",
            len(self.ends),
            missing[0],
        )

    def read_through(self, offset: int) -> bool:
        """Have the markers before ``offset`` of the batches topic been read?"""
        if self._from_ms is None:
            return False
        position = self._reader.position()
        return position is not None and position >= offset

    def get(self, refresh_id: str) -> EndMarker | None:
        return self.ends.get(refresh_id)

    def _prune(self) -> None:
        """Forget markers older than every one still needed (keeping the newest half).

        A marker is needed while its refresh is held (``needed``); markers after the
        oldest held one belong to refreshes whose events are still to come: a rebuild
        reading a long history reads markers far ahead of the events. When all are
        needed, :meth:`poll` stops reading until refreshes are applied (unless it
        is looking back for a marker: :meth:`_looking_back`). Needing a forgotten one
        later seeks back for it.
        """
        if len(self.ends) <= self.keep:
            return
        needed = self.needed() & set(self.ends)
        by_offset = sorted(self.ends.values(), key=lambda e: e.offset)
        floor = min((self.ends[r].offset for r in needed), default=None)
        cut = max(0, len(by_offset) - self.keep // 2)
        if floor is not None:
            cut = min(cut, next(i for i, e in enumerate(by_offset) if e.offset >= floor))
        if cut == 0:
            return
        kept = by_offset[cut:]
        self.ends = {e.refresh_id: e for e in kept}
        self._from_ms = max(self._from_ms or 0, kept[0].timestamp_ms)

    def close(self) -> None:
        self._reader.close()
