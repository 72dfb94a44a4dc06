"""The versions the last refresh recorded for the next one's overlap, with their keys.

A refresh re-reads ``overlap_seconds`` before its window and skips what the last
refresh recorded there (:class:`~producer.watermark.OverlapFilter`, by digest). At a
refresh a second, that overlap is two rows for every new one: reading their keys and
stamps and testing each in Python took about a quarter of the row reader's time.

A reader that made the last refresh's digests itself also knows what they were made
of: each table's keys and stamps (:class:`TableVersions`, kept here as they are
recorded). PostgreSQL can then answer for the whole overlap at once
(:meth:`~producer.source_reader.FrozenSnapshot.overlap_matches`): how many of its rows
are one of those versions, and which of those the next refresh must be told about.
When every row of the overlap is one of them, the overlap is decided without a row
read: each was published, each is skipped, and those at or after ``keep_from`` are
recorded again, by the digest already made of them. Anything else (a row committed
late, a version not recorded here) and the overlap is read and tested row by row, as
before (:mod:`producer.window_rows`).

Exactly the same decisions either way: a row of the overlap equal in key and stamp to
a recorded version has that version's digest, and the filter skips a row whose digest
it has seen. So a table's versions are used only when every digest among them is one
the filter has seen (:meth:`OverlapVersions.before`): the last committed refresh
recorded them, not an attempt that failed. Only integer keys and naive stamps (the
sync schema's) are matched, and no more than :data:`LIMIT` versions of a table are
held (a refresh of a million rows stamped in its last seconds holds none); a table with
anything else is read row by row.

A version is kept as the filter holds it (microseconds since the epoch, the stamp read
as a wall time in the source's zone); in a zone of one offset (UTC) the server gets the
stamp back from that alone, elsewhere each stamp's own wall time goes with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from schemas.avro.wall_time import fixed_offset, wall_micros_in

__all__ = ["OverlapMatch", "OverlapVersions", "TableVersions", "match_overlap"]

#: Microseconds from 1970-01-01 00:00 to a naive stamp's wall time: the ``n`` of
#: PostgreSQL's ``timestamp '1970-01-01' + n * interval '1 microsecond'``.
_naive_micros = wall_micros_in(UTC)
#: Versions held per table and refresh, at most (about 12 MB; at 10,000 changed rows a
#: second and a refresh a second, some 20,000 are recorded in all).
LIMIT = 100_000
#: Stamps within this many microseconds of 1970 (years 1685 to 2255): PostgreSQL turns
#: ``n`` back into the same stamp (the product is a double, exact below 2**53).
_EXACT_MICROS = 2**53
#: The text :func:`_array` makes of a list of ints, and of nothing else (``True``,
#: ``'1'``, ``1.0``, ``None`` are spelled otherwise).
_INT_ARRAY = re.compile(r"\{(?:-?[0-9]+(?:, -?[0-9]+)*)?\}")


@dataclass(slots=True)
class TableVersions:
    """One table's recorded versions, in the order recorded: the key, the version's
    microseconds as the filter holds it, the digest; and, in a zone of more than one
    offset (``shift`` None), the stamp's wall time in microseconds."""

    shift: int | None  # wall time minus version, in a zone of one offset
    keys: list[tuple[object, ...]] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    walls: list[int] = field(default_factory=list)
    #: Every version recorded is held here (no more than ``LIMIT``), every stamp naive
    #: (fold 0) as the sync schema's are read. Else nothing is held.
    whole: bool = True
    #: :meth:`arrays` as last made, and how many versions it was made of.
    _arrays: tuple[int, dict[str, str] | None] | None = field(default=None, repr=False)

    def add(self, key: tuple[object, ...], stamp: datetime, version_us: int, digest: bytes) -> None:
        if not self.whole:
            return
        if stamp.tzinfo is not None or stamp.fold or len(self.versions) >= LIMIT:
            self.drop()
            return
        self.keys.append(key)
        self.versions.append(version_us)
        self.digests.append(digest)
        if self.shift is None:
            self.walls.append(_naive_micros(stamp))

    def drop(self) -> None:
        """Hold nothing: the next refresh's overlap of this table is read row by row."""
        self.whole = False
        self.keys, self.versions, self.digests, self.walls = [], [], [], []
        self._arrays = None

    def copy(self, other: TableVersions, positions: Sequence[int]) -> None:
        """Record ``other``'s versions at ``positions`` here too."""
        if not self.whole:
            return
        if len(self.versions) + len(positions) > LIMIT:
            self.drop()
            return
        self.keys.extend([other.keys[p] for p in positions])
        self.versions.extend([other.versions[p] for p in positions])
        self.digests.extend([other.digests[p] for p in positions])
        if self.shift is None:
            self.walls.extend([other.walls[p] for p in positions])

    def matchable(self) -> bool:
        """Can the server match these versions: all of them held, their stamps in its exact
        range, keys of integers (checked here, once a refresh, not as each is recorded)?"""
        return self.arrays() is not None

    def arrays(self) -> dict[str, str] | None:
        """The versions as the texts of PostgreSQL arrays, for :func:`match_overlap`: the
        keys' columns ``k0``, ``k1``, the versions ``v`` and, in a zone of more than one
        offset, the wall times ``n``; None when the server cannot match them
        (:meth:`matchable`). Made once for the versions held (the last refresh's are asked
        for twice: whether to ask the server, then the question)."""
        made = self._arrays
        if made is not None and made[0] == len(self.versions):
            return made[1]
        found = self._make_arrays()
        self._arrays = (len(self.versions), found)
        return found

    def _make_arrays(self) -> dict[str, str] | None:
        if not self.whole:
            return None
        walls = self.walls if self.shift is None else self.versions
        shift = self.shift or 0
        if walls and not -_EXACT_MICROS < min(walls) + shift <= max(walls) + shift < _EXACT_MICROS:
            return None
        texts = {f"k{i}": _array(column) for i, column in enumerate(self.key_columns())}
        if not all(map(_INT_ARRAY.fullmatch, texts.values())):
            return None  # a key that is not an integer
        texts["v"] = _array(self.versions)
        if self.shift is None:
            texts["n"] = _array(self.walls)
        return texts

    def key_columns(self) -> list[list[object]]:
        """The keys' columns: the first column of every key, then the second (none when
        no version is recorded)."""
        keys = self.keys
        return [list(map(itemgetter(i), keys)) for i in range(len(keys[0]))] if keys else []


class OverlapVersions:
    """The versions recorded by this reader's last refresh and by the one it reads now."""

    def __init__(self, zone: tzinfo) -> None:
        offset = fixed_offset(zone)
        self._shift = None if offset is None else offset // timedelta(microseconds=1)
        self._current: dict[str, TableVersions] = {}
        self._previous: dict[str, TableVersions] = {}

    def next_refresh(self) -> None:
        self._previous, self._current = self._current, {}

    def prepare_next(self) -> None:
        """Make the arrays of what this refresh recorded (:meth:`TableVersions.arrays`)
        now, for the next refresh to send: a reader process does it between refreshes,
        while it waits, rather than in the next one (about 20,000 versions at 10,000
        changed rows a second: 0.02 s of the 0.32 s the reader took a refresh under
        ``make bench-freshness``)."""
        for versions in self._current.values():
            versions.matchable()

    def recording(self, table: str) -> TableVersions:
        """Where this refresh records ``table``'s versions."""
        versions = self._current.get(table)
        if versions is None:
            versions = self._current[table] = TableVersions(self._shift)
        return versions

    def before(self, table: str, seen: frozenset[bytes]) -> TableVersions | None:
        """``table``'s versions from the last refresh, when the server may match the
        overlap against them: every one of them is a change the filter has ``seen`` (the
        last committed refresh recorded it, not an attempt that failed) and they can be
        matched exactly. A table the last refresh recorded nothing of: an empty record."""
        versions = self._previous.get(table) or TableVersions(self._shift)
        if not seen.issuperset(versions.digests) or not versions.matchable():
            return None
        return versions


@dataclass(frozen=True, slots=True)
class OverlapMatch:
    """The server's answer for one table's overlap (:func:`match_overlap`)."""

    rows: int  # rows of the overlap (each matched version counted once per match)
    matched: int  # of them, equal in key and stamp to a recorded version
    late: int  # matched versions the filter holds at or after the window's start
    kept: list[int]  # the matched versions at or after keep_from, by position (from 0)

    @property
    def all_skipped(self) -> bool:
        """Is every row of the overlap a recorded version the filter skips (one before the
        window's start)? Then no row of it is published."""
        return self.matched == self.rows and self.late == 0


def _array(values: list[Any]) -> str:
    """``values`` (ints) as the text of a PostgreSQL array: ``{1, 2}``."""
    return "{" + repr(values)[1:-1] + "}"


def match_overlap(
    conn: sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    low: datetime,
    high: datetime,
    before: TableVersions,
    start_us: int,
    keep_us: int,
) -> OverlapMatch:
    """How many rows of ``table`` with ``low <= ModifiedDate < high`` (source-local stamps)
    are one of ``before``'s versions, how many of those are at or after ``start_us`` and
    which are at or after ``keep_us`` (the filter's microseconds, compared with each
    version's own as recorded).

    One statement: the versions go as arrays, joined to the overlap's rows by key and
    stamp. A row that matches none (committed late) leaves ``all_skipped`` False."""
    preparer = conn.dialect.identifier_preparer
    columns = [f"k{i}" for i in range(len(key))]
    arrays = [*columns, "v"] if before.shift is not None else [*columns, "v", "n"]
    wall = "u.v + :shift" if before.shift is not None else "u.n"
    unnest = ", ".join(f"CAST(:{a} AS bigint[])" for a in arrays)
    joined = " AND ".join(
        f"r.{preparer.quote(k)} = p.{c}" for k, c in zip(key, columns, strict=True)
    )
    modified = f"r.{preparer.quote('ModifiedDate')}"
    statement = (
        "SELECT count(*), count(p.o), count(p.o) FILTER (WHERE p.v >= :start), "
        "coalesce(array_agg(p.o) FILTER (WHERE p.v >= :keep)::text, '{}') "
        f"FROM {preparer.format_table(table)} AS r "
        f"LEFT JOIN (SELECT {', '.join(columns)}, u.v, u.o, "
        f"timestamp '1970-01-01' + ({wall}) * interval '1 microsecond' AS stamp "
        f"FROM unnest({unnest}) WITH ORDINALITY AS u({', '.join(arrays)}, o)) AS p "
        f"ON {joined} AND {modified} = p.stamp "
        f"WHERE {modified} >= :low AND {modified} < :high"
    )
    texts = before.arrays()
    if texts is None:
        msg = "these versions cannot be matched by the server (TableVersions.matchable)"
        raise ValueError(msg)
    params: dict[str, object] = {c: "{}" for c in columns}  # no version recorded: none
    params.update(texts, start=start_us, keep=keep_us, low=low, high=high)
    if before.shift is not None:
        params["shift"] = before.shift
    rows, matched, late, kept = conn.execute(sa.text(statement), params).one()
    positions = [int(o) - 1 for o in kept[1:-1].split(",")] if len(kept) > 2 else []
    return OverlapMatch(int(rows), int(matched), int(late), positions)
