"""Property: whatever order events and END markers arrive in, a batch never stores offsets
past an event it does not apply, and in the end every event is applied exactly once.

Refreshes are committed one after the other (one producer), so on each partition
their events follow commit order; the partitions' messages interleave at random, and
END markers become known and are forgotten at random (a reader looking back for an old
one, pruning in a long history). The assembler's own bookkeeping of which refresh
comes first on each partition is checked against the events it holds.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.assembly import Assembler, Batch, Slot
from consumers.changes import Change
from consumers.markers import EndMarker
from tests.unit.test_assembly import _change

SLOTS: list[Slot] = [("orders", 0), ("orders", 1), ("order_details", 0), ("order_details", 1)]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[str], dict[str, EndMarker], dict[Slot, list[Change]]]:
    """Refreshes in commit order, their END markers, and each slot's events in offset order."""
    count = draw(st.integers(1, 8))
    refreshes = [f"2026120{i}T000000Z-r" for i in range(count)]
    by_slot: dict[Slot, list[Change]] = {slot: [] for slot in SLOTS}
    ends = {}
    for position, refresh in enumerate(refreshes):
        touched = draw(st.sets(st.sampled_from(SLOTS), min_size=1))
        counts = {}
        for slot in sorted(touched):
            n = draw(st.integers(1, 3))
            counts[slot] = n
            for _ in range(n):
                offset = len(by_slot[slot])
                by_slot[slot].append(_change(refresh, *slot, key=offset, offset=offset))
        ends[refresh] = EndMarker(
            refresh,
            "watermark",
            event_count=sum(counts.values()),
            offset=position,
            partition_counts=counts,
        )
    return refreshes, ends, by_slot


def _check_queue(assembler: Assembler) -> None:
    """The assembler's per-slot order is the order of the first event held of each refresh."""
    reference: dict[Slot, list[tuple[int, str]]] = defaultdict(list)
    for refresh_id, held in assembler._held.items():
        starts = {slot: start for slot, (start, _) in held.streamed_span.items()}
        for slot, changes in held.changes.items():
            if changes:
                starts[slot] = min(starts.get(slot, changes[0].offset), changes[0].offset)
        for slot, start in starts.items():
            reference[slot].append((start, refresh_id))
    expected = {slot: [r for _, r in sorted(v)] for slot, v in reference.items()}
    assert {slot: list(q) for slot, q in assembler._queued.items()} == expected


def _committed(batch: Batch, streamed: dict[str, list[Change]]) -> dict[Slot, set[int]]:
    """What committing ``batch`` stores, per slot: its events and those taken out before."""
    taken: dict[Slot, set[int]] = defaultdict(set)
    for refresh_id, slots in batch.refreshes:
        for changes in [*slots.values(), streamed.get(refresh_id, [])]:
            for c in changes:
                taken[(c.table, c.partition)].add(c.offset)
    return taken


def _check_batch(taken: dict[Slot, set[int]], held: dict[Slot, set[int]]) -> None:
    """The batch takes, on each slot, the lowest offsets held there and nothing past them."""
    for slot, offsets in taken.items():
        left = held[slot] - offsets
        assert not left or min(left) > max(offsets), (slot, sorted(offsets), sorted(left))


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_no_batch_passes_an_event_it_does_not_apply(
    history: tuple[list[str], dict[str, EndMarker], dict[Slot, list[Change]]],
    data: st.DataObject,
) -> None:
    refreshes, all_ends, by_slot = history
    assembler = Assembler()
    pending = {slot: list(changes) for slot, changes in by_slot.items()}
    held: dict[Slot, set[int]] = defaultdict(set)
    applied: dict[Slot, list[int]] = defaultdict(list)
    known: dict[str, EndMarker] = {}
    # Refreshes applied in part in an open transaction (consumers.streaming): what of
    # them was taken out. The transaction commits with a batch that holds them all.
    streamed: dict[str, list[Change]] = {}

    def apply_ready(ends: dict[str, EndMarker]) -> bool:
        at_end = {slot for slot, rest in pending.items() if not rest}
        batch = assembler.ready(ends, set(SLOTS), at_end)
        if batch is None or not streamed.keys() <= {r for r, _ in batch.refreshes}:
            return False
        taken = _committed(batch, streamed)
        _check_batch(taken, held)
        for slot, offsets in taken.items():
            applied[slot].extend(sorted(offsets))
            held[slot] -= offsets
        streamed.clear()
        assembler.done(batch)
        _check_queue(assembler)
        return True

    def take_out() -> None:
        held_known = sorted(set(assembler.held_sizes()) & known.keys())
        if held_known:
            part = assembler.take([data.draw(st.sampled_from(held_known))])
            for refresh_id, slots in part.refreshes:
                streamed.setdefault(refresh_id, []).extend(c for v in slots.values() for c in v)
            _check_queue(assembler)

    while any(pending.values()):
        step = data.draw(st.sampled_from(["read", "read", "learn", "forget", "apply", "take"]))
        if step == "read":
            slot = data.draw(st.sampled_from([s for s, rest in pending.items() if rest]))
            for _ in range(data.draw(st.integers(1, 3))):
                if pending[slot]:
                    change = pending[slot].pop(0)
                    assembler.add(change)
                    held[slot].add(change.offset)
            _check_queue(assembler)
        elif step == "learn":
            refresh = data.draw(st.sampled_from(refreshes))
            known[refresh] = all_ends[refresh]
        elif step == "forget" and known:
            # Pruning keeps the markers of refreshes held; any other may go.
            gone = set(known) - set(assembler.needed_refreshes())
            if gone:
                known.pop(data.draw(st.sampled_from(sorted(gone))))
        elif step == "take":
            take_out()
        else:
            apply_ready(known)
    while apply_ready(all_ends):
        pass
    assert assembler.empty
    for slot, changes in by_slot.items():
        assert applied[slot] == [c.offset for c in changes], slot  # each once, in order
