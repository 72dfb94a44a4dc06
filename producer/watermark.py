"""Where the next refresh window starts and ends: the no-missed-change logic (promise 1).

Plain classes, testable without a database or Kafka.

A window reads rows with ``read_from <= ModifiedDate < end``:

* ``end`` is a *safe* bound handed in by the source reader: a time before which
  no change can still become visible (on PostgreSQL, the start of the oldest
  transaction in flight, minus a clock allowance; elsewhere the database clock
  minus a settle delay). It becomes the new watermark, and it only ever moves
  after Kafka has committed the refresh.
* ``start`` is the previous watermark (or 24 hours back on the first refresh, or
  the ``--since`` date once). Rows stamped exactly at ``end`` belong to the next
  window, so many rows sharing one timestamp are never split and lost.
* ``read_from`` is ``start`` minus an overlap, re-read in case a writer's clock
  lagged. Changes in that overlap that the previous refresh already published
  are recognised by their digests (kept in the END marker) and skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from producer.overlap_versions import OverlapVersions, TableVersions
from queuestream.errors import ConfigurationError
from schemas.avro.wall_time import fixed_offset, wall_micros

__all__ = [
    "DigestMemo",
    "OverlapFilter",
    "Progress",
    "Window",
    "WindowPlanner",
    "change_digest",
]

log = logging.getLogger(__name__)

DIGEST_SIZE = 8
_blake2b = hashlib.blake2b


@dataclass(frozen=True, slots=True)
class Progress:
    """What the last committed END marker of this producer says."""

    refresh_id: str | None = None
    watermark: datetime | None = None
    overlap_seen: frozenset[bytes] = frozenset()
    snapshot_fingerprint: str | None = None

    @staticmethod
    def unpack_digests(blob: bytes | None) -> frozenset[bytes]:
        if not blob:
            return frozenset()
        return frozenset(blob[i : i + DIGEST_SIZE] for i in range(0, len(blob), DIGEST_SIZE))


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    read_from: datetime
    since_override: datetime | None = None

    @property
    def resync(self) -> bool:
        return self.since_override is not None


def change_digest(table: str, key: tuple[object, ...], version: datetime) -> bytes:
    """8 bytes identifying one version of one row."""
    text = f"{table}\x1f{key!r}\x1f{version.isoformat()}"
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_SIZE).digest()


class DigestMemo:
    """The :func:`change_digest` of the changes digested lately, by table, key and stamp as
    read: a change is digested when a refresh records it for the next one, and again by
    each refresh that re-reads it in its overlap (at a refresh a second and an overlap
    of two, three times in all).

    Only a naive stamp (the source's wall time; ``fold`` 0, as drivers read it) is kept:
    its digest depends on the table, the key and the stamp's wall time alone. An aware
    stamp is digested each time (two equal ones may spell their offsets differently).
    It holds what the last two refreshes digested (:meth:`next_refresh` starts another),
    at most ``limit`` of each (about 15 MB each: a refresh a second at 10,000 changed
    rows a second digests some 30,000).

    ``versions`` keeps what the last refresh recorded with its keys and stamps, which lets
    PostgreSQL decide a whole overlap at once (:mod:`producer.overlap_versions`).
    """

    def __init__(self, zone: tzinfo, limit: int = 50_000) -> None:
        self.zone = zone
        self.limit = limit
        self._current: dict[tuple[str, tuple[object, ...], datetime], bytes] = {}
        self._previous: dict[tuple[str, tuple[object, ...], datetime], bytes] = {}
        self.versions = OverlapVersions(zone)
        #: In a zone of one offset forever, what ``isoformat`` appends to a naive stamp
        #: made aware in it ("+00:00"): a new change's digest is made without the zone.
        offset = fixed_offset(zone)
        self._suffix = (
            None if offset is None else datetime(2000, 1, 1, tzinfo=zone).isoformat()[19:]
        )

    def next_refresh(self) -> None:
        self._previous, self._current = self._current, {}
        self.versions.next_refresh()

    def digest(self, table: str, key: tuple[object, ...], stamp: datetime) -> bytes:
        """:func:`change_digest` of ``key``'s change stamped ``stamp`` (naive: a wall time
        in the zone)."""
        if stamp.tzinfo is not None or stamp.fold:
            return change_digest(
                table, key, stamp if stamp.tzinfo else stamp.replace(tzinfo=self.zone)
            )
        found = (table, key, stamp)
        digest = self._current.get(found)
        if digest is None:
            digest = self._previous.get(found)
            if digest is None:
                if self._suffix is None:
                    digest = change_digest(table, key, stamp.replace(tzinfo=self.zone))
                else:  # change_digest's text, the stamp's offset appended as it is
                    text = f"{table}\x1f{key!r}\x1f{stamp.isoformat()}{self._suffix}"
                    digest = _blake2b(text.encode(), digest_size=DIGEST_SIZE).digest()
            if len(self._current) < self.limit:
                self._current[found] = digest
        return digest


class WindowPlanner:
    """Plans the next window from the committed progress and a safe upper bound."""

    def __init__(self, first_window: timedelta, overlap: timedelta) -> None:
        if first_window <= timedelta(0):
            msg = "first_window must be positive"
            raise ValueError(msg)
        self.first_window = first_window
        self.overlap = overlap

    def plan(self, progress: Progress, safe_end: datetime, since: datetime | None = None) -> Window:
        if safe_end.tzinfo is None:
            msg = "safe_end must be timezone-aware"
            raise ValueError(msg)
        if since is not None:
            if since.tzinfo is None:
                msg = "since must be timezone-aware"
                raise ValueError(msg)
            if since > safe_end:
                # The window would be empty and its end, the next watermark, ``since``:
                # nothing published until then, and what commits late before it lost.
                msg = (
                    f"--since {since.isoformat()} is after {safe_end.isoformat()}, the "
                    "newest moment the source can be read up to now: a refresh from it "
                    "would publish nothing and move the watermark ahead, so that changes "
                    "until then would wait for it; give a moment in the past"
                )
                raise ConfigurationError(msg)
            if progress.watermark is not None and since > progress.watermark:
                log.warning(
                    "--since %s is after the watermark %s: the changes stamped between them "
                    "are not published by refreshes (a sweep finds them)",
                    since.isoformat(),
                    progress.watermark.isoformat(),
                )
            return Window(start=since, end=safe_end, read_from=since, since_override=since)
        if progress.watermark is None:
            start = safe_end - self.first_window
            return Window(start=start, end=safe_end, read_from=start)
        start = progress.watermark
        # Never move backwards, even if the clock did.
        return Window(start=start, end=max(safe_end, start), read_from=start - self.overlap)


@dataclass(slots=True)
class OverlapFilter:
    """De-duplicates the overlap between two windows.

    ``seen`` holds the digests the previous refresh recorded; ``keep_from`` is the
    earliest version the next refresh will re-read, so only changes at or after it
    are recorded for the next END marker.
    """

    window: Window
    seen: frozenset[bytes]
    keep_from: datetime
    recorded: list[bytes] = field(default_factory=list)
    skipped: int = 0
    #: window.start and keep_from in microseconds: what every row's version is held to.
    _start_us: int = field(init=False, default=0)
    _keep_us: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._start_us = wall_micros(self.window.start, UTC)
        self._keep_us = wall_micros(self.keep_from, UTC)

    @classmethod
    def for_window(cls, window: Window, progress: Progress, overlap: timedelta) -> OverlapFilter:
        seen = frozenset() if window.resync else progress.overlap_seen
        return cls(window=window, seen=seen, keep_from=window.end - overlap)

    @property
    def start_us(self) -> int:
        """The window's start in microseconds since the epoch: a version before it that
        the filter has seen is skipped."""
        return self._start_us

    @property
    def keep_us(self) -> int:
        """``keep_from`` in microseconds since the epoch: a version at or after it is
        recorded for the next refresh."""
        return self._keep_us

    def needs_digest(self, version: datetime) -> bool:
        return self.needs_digest_at(wall_micros(version, UTC))

    def needs_digest_at(self, version_us: int) -> bool:
        """:meth:`needs_digest` of a version in microseconds since the epoch (the cheap test
        made of every row; only the few it selects are digested)."""
        return version_us < self._start_us or version_us >= self._keep_us

    def admit(self, digest: bytes, version: datetime) -> bool:
        """False when this change was already published; records it for the next window."""
        return self.admit_at(digest, wall_micros(version, UTC))

    def admit_at(self, digest: bytes, version_us: int) -> bool:
        """:meth:`admit` of a version in microseconds since the epoch."""
        if version_us >= self._keep_us:
            self.recorded.append(digest)
        if version_us < self._start_us and digest in self.seen:
            self.skipped += 1
            return False
        return True

    def skip_recorded(self, count: int, kept: list[bytes]) -> None:
        """:meth:`admit_at` of ``count`` changes before the window's start whose digests the
        filter has seen, of which those at or after ``keep_from`` have the digests ``kept``:
        each skipped, those recorded again."""
        self.recorded.extend(kept)
        self.skipped += count

    def admit_noting(
        self,
        digest: bytes,
        version_us: int,
        key: tuple[object, ...],
        stamp: datetime,
        versions: TableVersions | None,
    ) -> bool:
        """:meth:`admit_at`, noting ``key`` and ``stamp`` in ``versions`` (if any) when the
        digest is recorded (:mod:`producer.overlap_versions`)."""
        if versions is None:
            return self.admit_at(digest, version_us)
        recorded = len(self.recorded)
        admitted = self.admit_at(digest, version_us)
        if len(self.recorded) > recorded:
            versions.add(key, stamp, version_us, digest)
        return admitted

    def packed(self) -> bytes:
        return b"".join(sorted(set(self.recorded)))
