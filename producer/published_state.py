"""What the producer knows it published, per row: a local cache of the state changelog.

Deletes leave nothing in the source to read, so the producer keeps, for every
(table, key) it published, the last version, the CustomerID of its partition
and the row's bytes (:class:`~producer.state_changelog.Published`). A line the
state holds for an order in a refresh but the source no longer has is deleted
in that refresh; the sweep (:mod:`producer.sweep`) compares the source with
this state, in key order, to find deletes and rows that were missed.

The state lives on disk, in a SQLite file under ``state_dir`` (one per prefix
and producer), so memory stays flat for tens of millions of keys. It is a cache:
the truth is the compacted changelog topic written in each batch's transaction
(:mod:`producer.state_changelog`). A batch writes its changes into an open
SQLite transaction as it goes; it is committed, with the id of the batch, once
Kafka committed the batch, and rolled back when the batch failed. At start-up
the cache is used only if it holds the id of the producer's last committed
END marker; otherwise (a crash between the two commits, a lost machine, a
deleted file) it is rebuilt from the changelog.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from producer.state_changelog import (
    SWEEP_KEY,
    Key,
    Published,
    packed_key,
    parent_range,
    parse_record_key,
    read_changelog,
    unpacked_key,
)
from queuestream.errors import ConfigurationError
from queuestream.settings import Settings
from queuestream.tables import TABLES

__all__ = ["PublishedState", "state_path"]

log = logging.getLogger(__name__)

#: One table per contract table, keyed by the row's key packed into SQLite's integer
#: key (:func:`~producer.state_changelog.packed_key`): a write is one B-tree's, with no
#: index beside it.
_SCHEMA = (
    "".join(
        f"CREATE TABLE IF NOT EXISTS {spec.name}_state (key INTEGER PRIMARY KEY, "
        "version INTEGER NOT NULL, customer INTEGER NOT NULL, row BLOB NOT NULL);\n"
        for spec in TABLES
    )
    + "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
)
_PUT = {s.name: f"INSERT OR REPLACE INTO {s.name}_state VALUES (?, ?, ?, ?)" for s in TABLES}
_DELETE = {s.name: f"DELETE FROM {s.name}_state WHERE key = ?" for s in TABLES}
_FLUSH_EVERY = 5000
#: The file's layout, in ``meta``: a cache of another layout is rebuilt at start.
#: "3" (after 0.7.2): a table per contract table, keyed by the packed key; writing the
#: 200,000 rows of `make bench` 2.6 → 2.3 µs a row. "2" (0.7.2): one ``published`` rowid
#: table with (tbl, k1, k2) as an index. Before: the same WITHOUT ROWID, whose rows (the
#: row's bytes, a few hundred) are too large for that (8.5 against 4.3 µs a row).
_LAYOUT = "3"
#: SQLite's page cache (KiB): a refresh writes keys in no order, all over the file.
_CACHE_KIB = 32_768
_IN_CHUNK = 500  # keys per IN (...) list


def _table(table: str) -> str:
    """``table``'s state table (a contract table's name, never anything else)."""
    if table not in _PUT:
        msg = f"no published state is kept for a table named {table!r}"
        raise ValueError(msg)
    return f"{table}_state"


def state_path(settings: Settings) -> Path:
    """The cache file of this prefix and producer."""
    name = f"{settings.topic_prefix}.{settings.effective_transactional_id}.sqlite"
    return Path(settings.state_dir) / name.replace("/", "_")


class PublishedState:
    """The local cache; writes happen inside :meth:`begin` ... :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            # Checkpoints are run by the writer thread after each commit (_checkpoint), not
            # inside the commit, where they held up the refresh's end.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            msg = (
                f"cannot keep the producer's state in {path}: {exc}; set state_dir "
                "(QUEUESTREAM_STATE_DIR) to a folder this process can write"
            )
            raise ConfigurationError(msg) from None
        # Writes not yet handed to the writer thread: runs of one statement each, in order.
        self._pending: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._pending_rows = 0
        self._open = False
        # One thread writes handed-over batches; the connection is used by one thread
        # at a time (every other use waits for that batch first: _settle).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="published-state")
        self._writing: Future[None] | None = None

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, refresh_id: str | None) -> PublishedState:
        """The cache, rebuilt from the changelog unless it reflects ``refresh_id`` (the
        producer's last committed END marker) already."""
        state = cls(state_path(settings))
        held = state.meta("refresh_id")
        if held is not None and held == (refresh_id or ""):
            if state.meta("layout") == _LAYOUT:
                return state
            log.info("the published state in %s has an older layout: rebuilt", state.path)
        state.close()
        state.path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(f"{state.path}{suffix}").unlink(missing_ok=True)
        state = cls(state_path(settings))
        state.rebuild(read_changelog(settings), refresh_id)
        return state

    def rebuild(
        self, records: Iterable[tuple[bytes, bytes | None]], refresh_id: str | None
    ) -> None:
        """Fill the (empty) cache from changelog ``records``, the latest of each key winning."""
        started = time.monotonic()
        self.begin()
        self.set_meta("layout", _LAYOUT)
        count = 0
        for key, value in records:
            count += 1
            if key == SWEEP_KEY:
                if value is not None:
                    self.set_meta("sweep", value.decode())
                continue
            table, row_key = parse_record_key(key)
            if value is None:
                self.delete(table, row_key)
            else:
                self.put(table, row_key, Published.decode(value))
        self.commit(refresh_id)
        log.info(
            "published state rebuilt from the changelog: %d records, %d rows, %.1fs (%s)",
            count,
            self.size(),
            time.monotonic() - started,
            self.path,
        )

    # -- reading ------------------------------------------------------------------------
    def meta(self, name: str) -> str | None:
        self._flush()
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def size(self) -> int:
        self._flush()
        return sum(
            int(self._db.execute(f"SELECT count(*) FROM {_table(s.name)}").fetchone()[0])
            for s in TABLES
        )

    def get(self, table: str, keys: Iterable[Key]) -> dict[Key, Published]:
        """The entries of ``keys`` that the state holds."""
        self._flush()
        found: dict[Key, Published] = {}
        wanted = [packed_key(key) for key in keys]
        for start in range(0, len(wanted), _IN_CHUNK):
            part = wanted[start : start + _IN_CHUNK]
            query = (
                f"SELECT key, version, customer, row FROM {_table(table)} "
                f"WHERE key IN ({','.join('?' for _ in part)})"
            )
            for key, version, customer, row in self._db.execute(query, part):
                found[unpacked_key(key)] = Published(version, customer, row)
        return found

    def children_keys(
        self, table: str, parents: Iterable[int], written: AbstractSet[int] = frozenset()
    ) -> set[Key]:
        """The keys of ``table``'s entries whose first key column is one of ``parents``
        (a range of packed keys each), but those in ``written``: packed keys
        (:func:`~producer.state_changelog.packed_key`) that this batch wrote, so the
        state holds each of them (a key it does not hold would hide another under the
        same 500 parents: pass what the writes were, ``BatchWriter.publish_all``'s).

        Parents are asked about 500 at a time, first for a count: where it is the
        number of ``written`` keys under them, they hold nothing else, and no key is
        read. A refresh of whole orders reads none (a refresh of 200,000 rows spent
        about 200 ms reading back its 100,000 lines, about 50 ms counting them).
        """
        self._flush()
        found: set[int] = set()
        wanted = sorted(set(parents))
        under = Counter(key >> 32 for key in written)  # written keys per parent
        for start in range(0, len(wanted), _IN_CHUNK):
            part = wanted[start : start + _IN_CHUNK]
            joined = (
                f"FROM (VALUES {','.join('(?, ?)' for _ in part)}) AS b "
                f"JOIN {_table(table)} AS t ON t.key BETWEEN b.column1 AND b.column2"
            )
            bounds = [bound for parent in part for bound in parent_range(parent)]
            if written:
                (held,) = self._db.execute(f"SELECT count(*) {joined}", bounds).fetchone()
                if held == sum(under[parent] for parent in part):
                    continue
            found.update(key for (key,) in self._db.execute(f"SELECT t.key {joined}", bounds))
        found.difference_update(written)
        return {unpacked_key(key) for key in found}

    def between(
        self, table: str, after: Key | None, upto: Key | None
    ) -> Iterator[tuple[Key, Published]]:
        """Entries of ``table`` with ``after < key <= upto`` (open ends: None), in key order."""
        self._flush()
        query = f"SELECT key, version, customer, row FROM {_table(table)} WHERE 1"
        params: list[Any] = []
        if after is not None:
            query += " AND key > ?"
            params.append(packed_key(after))
        if upto is not None:
            query += " AND key <= ?"
            params.append(packed_key(upto))
        for key, version, customer, row in self._db.execute(query + " ORDER BY key", params):
            yield unpacked_key(key), Published(version, customer, row)

    # -- writing ------------------------------------------------------------------------
    def begin(self) -> None:
        if self._open:
            self.rollback()
        self._settle()
        self._db.execute("BEGIN")
        self._open = True

    def put(self, table: str, key: Key, published: Published) -> None:
        self.put_row(table, key, published.version, published.customer, published.row)

    def put_row(self, table: str, key: Key, version: int, customer: int, row: bytes) -> None:
        """:meth:`put` of a Published given as its parts."""
        self._queue(_PUT[table], ((packed_key(key), version, customer, row),))

    def put_rows(self, table: str, rows: Sequence[tuple[int, int, int, bytes]]) -> None:
        """:meth:`put_row` of each of ``rows``, given as (packed key (:func:`packed_key`),
        version, customer, row): a refresh's chunk at a time, with no call for each."""
        self._queue(_PUT[table], rows)

    def delete(self, table: str, key: Key) -> None:
        self._queue(_DELETE[table], ((packed_key(key),),))

    def _queue(self, sql: str, params: Sequence[tuple[Any, ...]]) -> None:
        pending = self._pending
        if pending and pending[-1][0] == sql:
            pending[-1][1].extend(params)
        else:
            pending.append((sql, list(params)))
        self._pending_rows += len(params)
        if self._pending_rows >= _FLUSH_EVERY:
            self._hand_over()

    def set_meta(self, name: str, value: str) -> None:
        self._flush()
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def commit(self, refresh_id: str | None) -> None:
        """The batch committed in Kafka: keep its changes, noting that they reach ``refresh_id``."""
        self.set_meta("refresh_id", refresh_id or "")
        self._db.execute("COMMIT")
        self._open = False
        self._writing = self._writer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the committed batch from the write-ahead log into the file, beside what the
        producer does next. SQLite's own checkpoint ran inside COMMIT once the log passed
        4 MB: 170 ms of a 200,000-row refresh's end. A checkpoint that fails leaves the
        batch in the log, where it is safe, and the next one tries again."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("could not checkpoint the published state in %s: %s", self.path, exc)

    def rollback(self) -> None:
        """The batch failed: forget its changes."""
        self._pending.clear()
        self._pending_rows = 0
        try:
            self._settle()
        except sqlite3.Error:
            log.debug("a write of the failed batch failed too", exc_info=True)
        if self._open:
            self._db.execute("ROLLBACK")
            self._open = False

    def sweep_position(self) -> dict[str, Any] | None:
        text = self.meta("sweep")
        return None if text is None else dict(json.loads(text))

    def close(self) -> None:
        self.rollback()
        self._writer.shutdown()
        self._db.close()

    def _hand_over(self) -> None:
        """Queued writes to the writer thread (once its last batch is done, so that at most
        two batches are held): sqlite3 lets go of the GIL while SQLite works, so the
        batch is written while the caller encodes and sends the next events."""
        self._settle()
        pending, self._pending, self._pending_rows = self._pending, [], 0
        self._writing = self._writer.submit(self._write, pending)

    def _settle(self) -> None:
        """Wait for the writer thread's batch; its error, if any, is raised here."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _flush(self) -> None:
        """Run every queued write, before a read or a commit sees the state."""
        self._settle()
        pending, self._pending, self._pending_rows = self._pending, [], 0
        self._write(pending)

    def _write(self, pending: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Run ``pending``: its runs of one statement, in order (a delete between puts
        keeps its place)."""
        for sql, params in pending:
            self._db.executemany(sql, params)
