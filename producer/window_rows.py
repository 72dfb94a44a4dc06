"""The rows a watermark refresh publishes: its window's, and the overlap's it has not seen.

A refresh reads from ``overlap_seconds`` before its window (``Window.read_from``)
so that a row committed late with a stamp the last window already covered is not
lost; what the last refresh published of that overlap is recognised by digest
(:class:`~producer.watermark.OverlapFilter`) and skipped. At a short interval the
overlap is most of what a refresh reads (at 10,000 changed rows/s and a refresh a
second, two rows re-read for each new one), and nearly all of it is skipped.

So the overlap is read narrowly: its keys and versions first, each tested as
before; only when some were not seen are its full rows read again, in the same
snapshot, and those published. The window itself is read whole. Each row gets the
decision the one-query reading gave it (the same digest, the same filter, in the
same order), and the two ranges make up exactly the one the single query read:
where the source's local time does not run forward from the overlap into the
window (a clock put back in between), the single query is used.

On PostgreSQL, once the reader has made the last refresh's digests itself, it asks
the server first whether every row of the overlap is a version the last refresh
recorded (:mod:`producer.overlap_versions`); when it is, the overlap is decided with
no row read, and only a late row sends the reading back to the keys and versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from zoneinfo import ZoneInfo

from producer.changed_rows import ChangedRow, row_layout
from producer.overlap_versions import OverlapVersions, TableVersions
from producer.source_reader import FrozenSnapshot
from producer.watermark import DigestMemo, OverlapFilter, Window
from queuestream.sync_schema import to_source_local
from queuestream.tables import TableSpec
from schemas.avro.wall_time import wall_micros_in

__all__ = ["window_rows"]


def _filtered(
    rows: Iterator[ChangedRow],
    spec: TableSpec,
    overlap: OverlapFilter,
    zone: ZoneInfo,
    digests: DigestMemo,
    recording: TableVersions | None,
) -> Iterator[ChangedRow]:
    """``rows`` less what the last refresh published; most rows are tested by their version
    alone (no key or digest made). What the filter records is noted in ``recording``
    (where the server can use it)."""
    layout = row_layout(spec)
    modified, key_of, name = layout.modified, layout.key_of, spec.name
    micros = wall_micros_in(zone)
    # A change the filter wants digested is new unless the last refresh published it
    # (admit); recorded for the next refresh either way.
    needs_digest_at, admit, digest = overlap.needs_digest_at, overlap.admit_noting, digests.digest
    for changed in rows:
        values = changed.values
        stamp = values[modified]
        version_us = micros(stamp)
        if not needs_digest_at(version_us):
            yield changed
            continue
        key = key_of(values)
        if admit(digest(name, key, stamp), version_us, key, stamp, recording):
            yield changed


def _decided_by_server(
    snapshot: FrozenSnapshot,
    spec: TableSpec,
    window: Window,
    overlap: OverlapFilter,
    versions: OverlapVersions,
    recording: TableVersions | None,
) -> bool:
    """Is every row of the overlap a version the last refresh recorded, by the server's
    answer (:mod:`producer.overlap_versions`)? Then each is skipped, and those at or after
    ``keep_from`` are recorded again, as a row read and tested would be."""
    if recording is None:
        return False
    before = versions.before(spec.name, overlap.seen)
    if before is None:
        return False
    match = snapshot.overlap_matches(
        spec, window.read_from, window.start, before, overlap.start_us, overlap.keep_us
    )
    if match is None or not match.all_skipped:
        return False
    digests = before.digests
    overlap.skip_recorded(match.matched, [digests[p] for p in match.kept])
    recording.copy(before, match.kept)
    return True


def window_rows(
    snapshot: FrozenSnapshot,
    spec: TableSpec,
    window: Window,
    overlap: OverlapFilter,
    zone: ZoneInfo,
    digests: DigestMemo | None = None,
) -> Iterator[ChangedRow]:
    """The rows of ``spec`` a refresh of ``window`` publishes, in ModifiedDate, key order.
    ``digests``: the digests made lately (one refresh after another), else none."""
    if digests is None:
        digests = DigestMemo(zone)
    recording = digests.versions.recording(spec.name) if snapshot.matches_overlaps else None
    low, middle, high = (
        to_source_local(m, zone) for m in (window.read_from, window.start, window.end)
    )
    if low <= middle <= high:
        if not _decided_by_server(snapshot, spec, window, overlap, digests.versions, recording):
            yield from _overlap_rows(snapshot, spec, window, overlap, zone, digests, recording)
        rows = snapshot.changed_rows(spec, window.start, window.end)
    else:
        rows = snapshot.changed_rows(spec, window.read_from, window.end)
    yield from _filtered(rows, spec, overlap, zone, digests, recording)


def _overlap_rows(
    snapshot: FrozenSnapshot,
    spec: TableSpec,
    window: Window,
    overlap: OverlapFilter,
    zone: ZoneInfo,
    digests: DigestMemo,
    recording: TableVersions | None,
) -> Iterator[ChangedRow]:
    """The overlap's rows the last refresh did not publish: its keys and versions tested
    one by one, and the rows of those it did not see read whole."""
    unseen = set()
    micros = wall_micros_in(zone)  # a zone of one offset is not asked for each
    needs_digest_at, admit, digest = overlap.needs_digest_at, overlap.admit_noting, digests.digest
    name = spec.name
    for key, stamp in snapshot.versions(spec, window.read_from, window.start):
        version_us = micros(stamp)
        if not needs_digest_at(version_us) or admit(
            digest(name, key, stamp), version_us, key, stamp, recording
        ):
            unseen.add(key)
    if unseen:  # committed late: read whole, and published
        key_of = row_layout(spec).key_of
        for changed in snapshot.changed_rows(spec, window.read_from, window.start):
            if key_of(changed.values) in unseen:
                yield changed
