"""A refresh too big to hold, applied in parts inside one open target transaction (issue 10).

Batch-consistent apply (:mod:`.assembly`) holds a refresh until it is whole on the
partitions this member owns; held as decoded events, a refresh of a million rows
would take gigabytes. So once the events held of refreshes that are not whole yet
pass ``open_at``, the runtime stops holding and starts applying: it opens a target
transaction (:class:`~consumers.batch_apply.OpenBatch`) and, as the events arrive,
takes every ``part`` of them out of the assembler and writes them there. Only the
commit makes them visible, and it comes when every refresh of which a part was
written is whole: rows, offsets and sync log in one transaction, as for any batch.

What the open transaction may take is bounded by a *horizon*: the END marker of
the latest refresh known when it opened. A partition that reaches the events of a
refresh beyond it is paused (what was read of it stays held, at most one read), so
that the refreshes within the horizon become whole and the transaction commits;
refreshes within the horizon that show up later (a partition behind the others)
join it. At the commit, small whole refreshes that followed ride along.

Nothing of an open transaction is kept when it cannot commit: on an outage, a
revocation or a stop the runtime rolls it back and reads its partitions again from
the offsets stored in the target (:meth:`ConsumerRuntime._abandon
<consumers.runtime.ConsumerRuntime>`); the dead letters are published just before
the commit, so nothing reaches a dead-letter topic for a transaction rolled back.
"""

from __future__ import annotations

import logging

from consumers.assembly import Assembler, Batch, Slot
from consumers.batch_apply import Applied, BatchApplier, OpenBatch
from consumers.markers import EndMarker
from consumers.ownership import Ownership

__all__ = ["OPEN_AT", "PART", "Streaming"]

log = logging.getLogger(__name__)

#: Events held of refreshes with a known END marker, none of them ready: open a transaction.
OPEN_AT = 10_000
#: Events taken out and written at a time while the transaction is open.
PART = 5_000


class Streaming:
    """The open transaction of one consumer, and which partitions wait for it to commit."""

    def __init__(
        self,
        assembler: Assembler,
        ownership: Ownership,
        applier: BatchApplier,
        *,
        open_at: int | None = None,
        part: int | None = None,
    ) -> None:
        self.assembler = assembler
        self.ownership = ownership
        self.applier = applier
        self.open_at = OPEN_AT if open_at is None else open_at
        self.part = PART if part is None else part
        self._open: OpenBatch | None = None
        self._horizon: EndMarker | None = None
        self._taken: set[str] = set()  # refreshes of which a part was taken out
        self._held_back: set[Slot] = set()

    @property
    def active(self) -> bool:
        return self._open is not None

    def wanted(self, ends: dict[str, EndMarker]) -> bool:
        """Should a transaction open: are enough events held of refreshes that are not whole?

        Called when no batch is ready. Only refreshes whose END marker is known count
        (a bounded run never knows those committed after its moment).
        """
        sizes = self.assembler.held_sizes()
        return sum(n for r, n in sizes.items() if r in ends) >= self.open_at

    def start(self, ends: dict[str, EndMarker]) -> None:
        """Open the transaction; its horizon is the latest END marker of what is held."""
        known = [ends[r] for r in self.assembler.held_sizes() if r in ends]
        horizon = max(known, key=lambda end: end.offset)
        owned = {(self.ownership.topics[t], p) for t, p in self.ownership.owned}
        self._open = self.applier.begin(owned)
        self._horizon = horizon
        log.info(
            "%d events held of refreshes not whole yet: applying them as they arrive, "
            "up to refresh %s, in one transaction",
            sum(self.assembler.held_sizes().values()),
            horizon.refresh_id,
        )

    def turn(self, ends: dict[str, EndMarker]) -> tuple[Applied, Batch] | None:
        """One turn of the loop: hold partitions back, write a part, or commit.

        Returns the committed batch (to forget) and what committed, else None.
        Raises what :class:`~consumers.batch_apply.OpenBatch` raises; the caller then
        :meth:`abandon`\\ s the transaction.
        """
        assert self._open is not None
        self._hold_back(ends)
        batch = self.assembler.ready(ends, self.ownership.owned, self.ownership.at_end)
        if batch is not None and self._taken <= {r for r, _ in batch.refreshes}:
            applied = self._open.commit(batch)
            self._close()
            return applied, batch
        sizes = self.assembler.held_sizes()
        within = [r for r, n in sizes.items() if n and self._within(r, ends)]
        if sum(sizes[r] for r in within) >= self.part:
            part = self.assembler.take(within)
            self._taken.update(r for r, _ in part.refreshes)
            self._open.apply(part)
        return None

    def abandon(self) -> None:
        """Roll the open transaction back (the caller reads its partitions again)."""
        if self._open is None:
            return
        log.warning(
            "rolled back the transaction applying %s in parts: nothing of it committed; "
            "reading again from the target's offsets",
            ", ".join(sorted(self._taken)) or "refreshes",
        )
        self._open.close()
        self._held_back.clear()  # the caller rewinds (pauses) every owned partition
        self._close()

    def _close(self) -> None:
        if self._open is not None:
            self._open.close()
        self._open = None
        self._horizon = None
        self._taken.clear()
        self.ownership.hold(self._held_back, False)
        self._held_back.clear()

    # -- which refreshes the transaction takes -----------------------------------------------
    def _within(self, refresh_id: str, ends: dict[str, EndMarker]) -> bool:
        """Is ``refresh_id`` committed no later than the horizon (known by its END marker)?"""
        assert self._horizon is not None
        end = ends.get(refresh_id)
        return end is not None and end.offset <= self._horizon.offset

    def _beyond(self, refresh_id: str, ends: dict[str, EndMarker]) -> bool:
        """Is ``refresh_id`` later than the horizon? Refresh ids start with their start
        time: they tell when the END marker is not read yet (or was forgotten long ago).
        """
        assert self._horizon is not None
        end = ends.get(refresh_id)
        if end is None:
            return refresh_id > self._horizon.refresh_id
        return end.offset > self._horizon.offset

    def _hold_back(self, ends: dict[str, EndMarker]) -> None:
        """Pause the partitions read into a refresh beyond the horizon; resume the others."""
        beyond = set()
        for slot in self.ownership.owned:
            last = self.assembler.last_refresh(slot)
            if last is not None and self._beyond(last, ends):
                beyond.add(slot)
        self.ownership.hold(beyond - self._held_back, True)
        self.ownership.hold(self._held_back - beyond, False)
        self._held_back = beyond
