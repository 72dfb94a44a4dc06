"""The producer's local state of what it published: writes commit or roll back with their
batch, lookups see the batch's own writes, and the cache is used only when it reflects
the producer's last committed batch (otherwise rebuilt from the changelog)."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer import published_state
from producer.published_state import PublishedState, state_path
from producer.state_changelog import (
    SWEEP_KEY,
    Published,
    packed_key,
    parent_range,
    parse_record_key,
    record_key,
    record_key_format,
)
from queuestream.errors import ConfigurationError
from queuestream.settings import Settings, load_settings
from queuestream.tables import TABLES


def _row(n: int) -> Published:
    return Published(version=1_000 + n, customer=n % 7, row=f"row {n}".encode())


def _settings(tmp_path: Path) -> Settings:
    return load_settings(None, state_dir=tmp_path / "state", topic_prefix="t", transactional_id="p")


def test_writes_commit_or_roll_back_with_their_batch(tmp_path: Path) -> None:
    state = PublishedState(tmp_path / "s.sqlite")
    state.begin()
    for line in (1, 2, 3):
        state.put("order_details", (10, line), _row(line))
    state.put("orders", (10, 0), _row(10))
    # The batch's own writes are visible to it (an order's lines, looked up mid-refresh).
    assert state.children_keys("order_details", {10}) == {(10, 1), (10, 2), (10, 3)}
    state.commit("r1")

    state.begin()
    state.delete("order_details", (10, 2))
    state.put("orders", (10, 0), _row(11))
    state.rollback()  # the Kafka transaction failed
    assert state.children_keys("order_details", {10}) == {(10, 1), (10, 2), (10, 3)}
    assert state.get("orders", [(10, 0), (99, 0)]) == {(10, 0): _row(10)}
    assert state.meta("refresh_id") == "r1"

    state.begin()
    state.delete("order_details", (10, 2))
    state.commit("r2")
    assert [k for k, _ in state.between("order_details", None, None)] == [(10, 1), (10, 3)]
    assert [k for k, _ in state.between("order_details", (10, 1), (10, 3))] == [(10, 3)]
    assert state.meta("refresh_id") == "r2"
    state.close()


def test_lines_the_batch_wrote_are_counted_not_read_back(tmp_path: Path) -> None:
    """Asked for an order's lines beyond those the batch wrote, the state counts them,
    and reads keys back only for parents that hold more (the fetch a refresh of whole
    orders no longer makes)."""
    state = PublishedState(tmp_path / "s.sqlite")
    state.begin()
    for line in (1, 2, 3):
        state.put("order_details", (10, line), _row(line))
        state.put("order_details", (20, line), _row(line))
    statements: list[str] = []
    state._db.set_trace_callback(statements.append)
    written = {packed_key((10, line)) for line in (1, 2, 3)}
    assert state.children_keys("order_details", {10}, written) == set()
    assert not [s for s in statements if s.startswith("SELECT t.key")]
    assert [s for s in statements if s.startswith("SELECT count(*)")]
    written.add(packed_key((20, 1)))
    assert state.children_keys("order_details", {10, 20}, written) == {(20, 2), (20, 3)}
    # One order at a time: the first counted out, the second read back.
    statements.clear()
    with patch.object(published_state, "_IN_CHUNK", 1):
        assert state.children_keys("order_details", {10, 20}, written) == {(20, 2), (20, 3)}
    assert len([s for s in statements if s.startswith("SELECT count(*)")]) == 2
    assert len([s for s in statements if s.startswith("SELECT t.key")]) == 1
    state.close()


def test_a_delete_between_puts_keeps_its_place(tmp_path: Path) -> None:
    state = PublishedState(tmp_path / "s.sqlite")
    state.begin()
    state.put("payments", (1, 0), _row(1))
    state.delete("payments", (1, 0))
    state.put("payments", (1, 0), _row(2))
    state.delete("payments", (2, 0))
    state.commit("r")
    assert state.get("payments", [(1, 0)]) == {(1, 0): _row(2)}
    state.close()


def test_rows_put_a_chunk_at_a_time_keep_their_order_among_the_other_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put_rows`` (a refresh's chunk) queues its rows in one run with the puts beside
    it, a delete between them keeps its place, and handing over to the writer thread
    (every 3 rows here) neither loses nor reorders one; the caller's list is its own."""
    monkeypatch.setattr(published_state, "_FLUSH_EVERY", 3)
    state = PublishedState(tmp_path / "s.sqlite")
    state.begin()

    def chunk(*lines: int, version: int) -> list[tuple[int, int, int, bytes]]:
        return [(packed_key((10, n)), version, 7, f"line {n} v{version}".encode()) for n in lines]

    first = chunk(1, 2, version=1)
    state.put_rows("order_details", first)
    state.put_row("order_details", (10, 3), 1, 7, b"line 3 v1")
    state.delete("order_details", (10, 2))
    state.put_rows("order_details", chunk(2, 4, 5, 6, version=2))
    state.delete("order_details", (10, 5))
    state.put_rows("order_details", chunk(1, version=3))
    assert first == chunk(1, 2, version=1)
    state.commit("r")
    assert {k: (p.version, p.row) for k, p in state.between("order_details", None, None)} == {
        (10, 1): (3, b"line 1 v3"),
        (10, 2): (2, b"line 2 v2"),
        (10, 3): (1, b"line 3 v1"),
        (10, 4): (2, b"line 4 v2"),
        (10, 6): (2, b"line 6 v2"),
    }
    state.close()


def test_a_committed_batch_is_checkpointed_into_the_file_beside_the_next_work(
    tmp_path: Path,
) -> None:
    """SQLite's own checkpoint ran inside COMMIT (170 ms at the end of a 200,000-row
    refresh); the writer thread runs it after the commit instead. Either way the batch
    reaches the file itself, not only the write-ahead log, and the log stays bounded."""
    path = tmp_path / "s.sqlite"
    state = PublishedState(path)
    empty = path.stat().st_size
    state.begin()
    for n in range(2_000):
        state.put("orders", (n, 0), Published(n, 0, bytes(300)))
    state.commit("r1")
    state.meta("refresh_id")  # waits for the writer thread
    assert path.stat().st_size > empty + 2_000 * 300, "the batch stayed in the log"
    state.close()


def test_a_checkpoint_that_fails_is_logged_and_the_state_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = PublishedState(tmp_path / "s.sqlite")

    class Refusing:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> object:
            if "wal_checkpoint" in sql:
                msg = "disk I/O error"
                raise sqlite3.OperationalError(msg)
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

    db = state._db
    monkeypatch.setattr(state, "_db", Refusing(db))
    state.begin()
    state.put("orders", (1, 0), _row(1))
    state.commit("r1")
    assert state.get("orders", [(1, 0)]) == {(1, 0): _row(1)}
    assert "could not checkpoint the published state" in caplog.text
    monkeypatch.setattr(state, "_db", db)
    state.close()


def _changelog(records: list[tuple[bytes, bytes | None]]) -> Iterator[tuple[bytes, bytes | None]]:
    yield from records


def test_open_uses_the_cache_only_when_it_reflects_the_last_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    records: list[tuple[bytes, bytes | None]] = [
        (record_key("orders", (1, 0)), _row(1).encode()),
        (record_key("orders", (2, 0)), _row(2).encode()),
        (record_key("orders", (1, 0)), _row(3).encode()),  # the latest wins
        (record_key("orders", (2, 0)), None),  # deleted
        (SWEEP_KEY, b'{"table": "orders"}'),
    ]
    reads: list[int] = []

    def read_changelog(_settings: Settings) -> Iterator[tuple[bytes, bytes | None]]:
        reads.append(1)
        return _changelog(records)

    monkeypatch.setattr(published_state, "read_changelog", read_changelog)
    state = PublishedState.open(settings, "r9")
    assert reads == [1]  # no cache yet: rebuilt
    assert state.get("orders", [(1, 0), (2, 0)]) == {(1, 0): _row(3)}
    assert state.sweep_position() == {"table": "orders"}
    state.close()

    PublishedState.open(settings, "r9").close()
    assert reads == [1]  # the cache holds r9: used as it is
    state = PublishedState.open(settings, "r10")  # a batch committed that the cache missed
    assert reads == [1, 1]
    assert state.meta("refresh_id") == "r10"
    state.close()
    assert state_path(settings).exists()


_LAYOUT_0_7_1 = (
    "CREATE TABLE published (tbl TEXT NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL,"
    " version INTEGER NOT NULL, customer INTEGER NOT NULL, row BLOB NOT NULL,"
    " PRIMARY KEY (tbl, k1, k2)) WITHOUT ROWID;"
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT INTO meta VALUES ('refresh_id', 'r9');"
)
_LAYOUT_0_7_2 = (
    "CREATE TABLE published (tbl TEXT NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL,"
    " version INTEGER NOT NULL, customer INTEGER NOT NULL, row BLOB NOT NULL,"
    " PRIMARY KEY (tbl, k1, k2));"
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT INTO meta VALUES ('refresh_id', 'r9'), ('layout', '2');"
)


@pytest.mark.parametrize("older", [_LAYOUT_0_7_1, _LAYOUT_0_7_2], ids=["0.7.1", "0.7.2"])
def test_a_cache_of_an_older_layout_is_rebuilt_in_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, older: str
) -> None:
    """0.7.1's file (``published`` WITHOUT ROWID, no layout noted) or 0.7.2's (a rowid
    table, layout 2), holding the last batch, is rebuilt from the changelog into a table
    per contract table keyed by the packed key (a write is one B-tree's)."""
    settings = _settings(tmp_path)
    path = state_path(settings)
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(older)
    old.commit()
    old.close()
    records: list[tuple[bytes, bytes | None]] = [(record_key("orders", (1, 0)), _row(1).encode())]
    monkeypatch.setattr(published_state, "read_changelog", lambda _s: _changelog(records))

    state = PublishedState.open(settings, "r9")
    assert state.get("orders", [(1, 0)]) == {(1, 0): _row(1)}  # read from the changelog
    state.close()
    found = sqlite3.connect(path)
    tables = {name for (name,) in found.execute("SELECT name FROM sqlite_master")}
    found.close()
    assert "published" not in tables
    assert "orders_state" in tables
    # Used as it is from now on.
    monkeypatch.setattr(published_state, "read_changelog", lambda _s: pytest.fail("rebuilt"))
    PublishedState.open(settings, "r9").close()


@given(
    st.lists(
        st.tuples(
            st.integers(-(2**31), 2**31 - 1),
            st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1]) | st.integers(-(2**31), 2**31 - 1),
        ),
        min_size=1,
        max_size=30,
        unique=True,
    ),
    st.data(),
)
@settings(max_examples=60, deadline=None)
def test_keys_at_the_ends_of_32_bits_keep_their_order_and_their_children(
    keys: list[tuple[int, int]], data: st.DataObject
) -> None:
    """A key is packed into one integer: any two 32-bit columns come back as they went in,
    in (k1, k2) order between any two keys, and an order's lines are found by k1."""
    with tempfile.TemporaryDirectory() as folder:
        state = PublishedState(Path(folder) / "s.sqlite")
        state.begin()
        for n, key in enumerate(keys):
            state.put("order_details", key, _row(n))
        state.commit("r")
        ordered = sorted(keys)
        assert [k for k, _ in state.between("order_details", None, None)] == ordered
        low, high = sorted(data.draw(st.sampled_from(ordered)) for _ in range(2))
        assert [k for k, _ in state.between("order_details", low, high)] == [
            k for k in ordered if low < k <= high
        ]
        parents = data.draw(st.sets(st.sampled_from([k[0] for k in keys] + [0, -1, 2**31 - 1])))
        assert state.children_keys("order_details", parents) == {k for k in keys if k[0] in parents}
        # Less the keys the batch wrote: the parents asked 2 at a time, some counted out.
        written = data.draw(st.sets(st.sampled_from(keys)))
        with patch.object(published_state, "_IN_CHUNK", 2):
            assert state.children_keys(
                "order_details", parents, {packed_key(k) for k in written}
            ) == {k for k in keys if k[0] in parents and k not in written}
        assert state.get("order_details", keys) == {k: _row(n) for n, k in enumerate(keys)}
        state.close()


def test_record_keys_round_trip() -> None:
    assert parse_record_key(record_key("order_details", (12, 3))) == ("order_details", (12, 3))
    assert Published.decode(_row(5).encode()) == _row(5)


@given(
    st.sampled_from([spec.name for spec in TABLES] + ["50%_off"]),
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),
)
def test_a_record_key_is_its_table_and_key_columns_joined_by_slashes(
    table: str, key: tuple[int, int]
) -> None:
    """The changelog's keys as the module says they are written, ``<table>/<k1>/<k2>``,
    however they are formatted; and read back."""
    assert record_key(table, key) == f"{table}/{key[0]}/{key[1]}".encode()
    assert record_key_format(table) % key == record_key(table, key)
    assert parse_record_key(record_key(table, key)) == (table, key)


def test_a_state_dir_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="QUEUESTREAM_STATE_DIR"):
        PublishedState(blocker / "state" / "s.sqlite")


@given(st.integers(-(2**31), 2**31 - 1))
def test_a_parents_range_runs_from_its_first_to_its_last_packed_key(parent: int) -> None:
    assert parent_range(parent) == (
        packed_key((parent, -(2**31))),
        packed_key((parent, 2**31 - 1)),
    )
