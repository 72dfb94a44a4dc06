"""END markers kept in memory: pruning never forgets the marker of a refresh still held."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumers.markers import EndMarker, EndMarkers
from queuestream.settings import load_settings
from schemas.avro import AvroCodec


@pytest.fixture
def markers() -> Iterator[EndMarkers]:
    # The consumer is never used here: nothing connects to this address.
    settings = load_settings(None, kafka_bootstrap_servers="127.0.0.1:9")
    found = EndMarkers(settings, AvroCodec.from_url("exigo", None), "group")
    found.keep = 4
    found._from_ms = 0
    found.ends = {
        f"r{i}": EndMarker(f"r{i}", "watermark", event_count=1, offset=i, timestamp_ms=1000 * i)
        for i in range(8)
    }
    found._newest = "r7"
    try:
        yield found
    finally:
        found.close()


def test_without_held_refreshes_the_newest_half_is_kept(markers: EndMarkers) -> None:
    markers._prune()
    assert sorted(markers.ends) == ["r6", "r7"]
    assert markers._from_ms == 6000  # an older marker needed later is sought again


def test_the_oldest_held_refresh_and_all_after_it_are_kept(markers: EndMarkers) -> None:
    markers.needed = lambda: {"r2", "r5"}
    markers._prune()
    assert sorted(markers.ends) == [f"r{i}" for i in range(2, 8)]


def test_nothing_is_pruned_when_the_oldest_is_held(markers: EndMarkers) -> None:
    markers.needed = lambda: {"r0"}
    markers._prune()
    assert len(markers.ends) == 8


class _Reader:
    """The batches topic's reader: hands out ``markers`` a few at a time."""

    def __init__(self, markers: list[EndMarker]) -> None:
        self.markers = markers

    def read(self, max_messages: int = 500) -> list[EndMarker] | None:
        taken, self.markers = self.markers[:2], self.markers[2:]
        return taken or None

    def close(self) -> None:
        pass


def _marker(i: int) -> EndMarker:
    return EndMarker(f"r{i}", "watermark", event_count=1, offset=i, timestamp_ms=1000 * i)


def test_reading_stops_when_every_marker_kept_is_needed(markers: EndMarkers) -> None:
    markers.needed = lambda: set(markers.ends)
    markers._reader.close()
    markers._reader = _Reader([_marker(i) for i in range(8, 12)])  # type: ignore[assignment]
    assert markers.poll() == 0
    assert len(markers.ends) == 8  # waits for refreshes to be applied


def test_reading_goes_on_while_looking_back_for_the_marker_of_a_refresh_held(
    markers: EndMarkers,
) -> None:
    # r1 was pruned before its events came; they did, and the reader looked back for
    # it. The refreshes kept wait behind it: stopping at the bound would apply nothing,
    # ever, and pruning would move the reader's start past it (another look back).
    del markers.ends["r1"]
    markers.needed = lambda: set(markers.ends) | {"r1"}
    markers._reader.close()
    markers._reader = _Reader([_marker(0), _marker(1), _marker(2)])  # type: ignore[assignment]
    markers.poll()
    assert "r1" in markers.ends
    assert markers._from_ms == 0  # not moved past it while it was missing


def test_a_marker_not_written_yet_does_not_lift_the_bound(markers: EndMarkers) -> None:
    # r9 is held, but its END is not written yet (a refresh running at a rebuild's
    # moment, whose END the rebuild ignores): reading on would keep every marker.
    markers.needed = lambda: set(markers.ends) | {"r9"}
    markers._reader.close()
    markers._reader = _Reader([_marker(i) for i in range(10, 14)])  # type: ignore[assignment]
    markers.poll()
    assert len(markers.ends) == 8
