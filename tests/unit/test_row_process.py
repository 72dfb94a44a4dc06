"""The row reader (producer.row_process) gives the body what reading here gives it.

A real second process on a simulated SQLite source: the same prepared rows in the
same order, the same overlap decisions and lines, an unencodable row as its dead
letter; an error in the reader raised here as itself; a reader that dies replaced.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from producer.events import PreparedRow, RefusedRow, RowPreparer
from producer.partitioning import CustomerPartitioner
from producer.row_process import CHUNK, ReaderJob, ReaderSource, RowReader
from producer.sensitive import column_policy
from producer.simulator import Simulator
from producer.source_reader import SourceReader
from producer.watermark import OverlapFilter, Window, change_digest
from producer.window_rows import window_rows
from queuestream.databases import create_engine
from queuestream.errors import ConfigurationError, DatabaseAccessError, RetriableError
from queuestream.settings import Settings, load_settings
from queuestream.sync_schema import Base
from queuestream.tables import TABLES, TABLES_BY_NAME, TableSpec
from schemas.avro import AvroCodec
from tests.source_readings import ALL_TIME, WRONG_TYPES, wrong_typed_source

PARTITIONS = 6
ZONE = "America/New_York"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A simulated sync database (some 5,000 rows over every table), one value too wide."""
    path: Path = tmp_path_factory.mktemp("source") / "sync.db"
    settings = load_settings(
        None,
        source_url=f"sqlite:///{path}",
        source_timezone=ZONE,
        sensitive_columns={"customers": {"Email": "hash"}},
        hash_key="not-a-secret-only-a-test-key",
    )
    engine = create_engine(settings.source_url, writer=True)
    try:
        Simulator(engine, settings.zone, seed=7).run(1500, per_transaction=50)
        payments = Base.metadata.tables["Payments"]
        with engine.begin() as conn:  # an int column's value past 32 bits: refused
            first, last = conn.execute(
                sa.select(sa.func.min(payments.c.PaymentID), sa.func.max(payments.c.ModifiedDate))
            ).one()
            conn.execute(
                payments.update()
                .where(payments.c.PaymentID == first)
                .values(PaymentTypeID=1 << 40, ModifiedDate=last)
            )
    finally:
        engine.dispose()
    yield settings


def _window(settings: Settings) -> tuple[Window, OverlapFilter]:
    """A window over everything, its overlap the last minute of the rows' stamps, some of
    those rows published by the 'last refresh' (their digests seen)."""
    engine = create_engine(settings.source_url)
    reader = SourceReader(engine, settings)
    end = datetime.now(UTC) + timedelta(days=1)
    with reader.frozen() as snapshot:
        stamps = [
            c.row["ModifiedDate"].replace(tzinfo=settings.zone)
            for c in snapshot.changed_rows(
                TABLES_BY_NAME["orders"], datetime(2000, 1, 1, tzinfo=UTC), end
            )
        ]
        start = stamps[len(stamps) // 2].astimezone(UTC)
        window = Window(start=start, end=end, read_from=start - timedelta(minutes=1))
        seen = frozenset(
            change_digest(
                spec.name,
                tuple(c.row[k] for k in spec.key),
                c.row["ModifiedDate"].replace(tzinfo=settings.zone),
            )
            for spec in TABLES
            for i, c in enumerate(snapshot.changed_rows(spec, window.read_from, window.start))
            if i % 2 == 0
        )
    engine.dispose()
    return window, OverlapFilter(window=window, seen=seen, keep_from=window.start)


def _local(settings: Settings, window: Window, overlap: OverlapFilter) -> dict[str, Any]:
    """Read and prepared in this process: the reference."""
    engine = create_engine(settings.source_url)
    codec = AvroCodec.from_url(settings.topic_prefix, None)
    partitioner = CustomerPartitioner(PARTITIONS)
    out: dict[str, Any] = {}
    with SourceReader(engine, settings).frozen() as snapshot:
        for spec in TABLES:
            preparer = RowPreparer(
                spec,
                codec,
                column_policy(settings),
                partitioner,
                settings.zone,
                window.start,
                False,
            )
            out[spec.name] = [
                preparer.prepare(c)
                for c in window_rows(snapshot, spec, window, overlap, settings.zone)
            ]
        out["lines"] = snapshot.keys_under(TABLES_BY_NAME["order_details"], {1, 2, 3, 10**9})
    engine.dispose()
    return out


def _flat(source: ReaderSource, spec: TableSpec) -> list[PreparedRow | RefusedRow]:
    """``spec``'s prepared rows from a reader's snapshot, its chunks joined."""
    return [row for chunk in source.chunks(spec, None) for row in chunk]  # type: ignore[arg-type]


def _job(window: Window, overlap: OverlapFilter) -> ReaderJob:
    return ReaderJob(window, overlap)


def test_the_reader_prepares_what_this_process_prepares(source: Settings) -> None:
    window, overlap = _window(source)
    here_overlap = OverlapFilter(window=window, seen=overlap.seen, keep_from=overlap.keep_from)
    expected = _local(source, window, here_overlap)
    reader = RowReader(source, PARTITIONS)
    try:
        got: dict[str, Any] = {}
        with reader.snapshot(_job(window, overlap)) as rows:
            for spec in TABLES:
                got[spec.name] = _flat(rows, spec)
                if spec.name == "orders":  # asked mid-stream, as the body does
                    got["lines"] = rows.keys_under(
                        TABLES_BY_NAME["order_details"], {1, 2, 3, 10**9}
                    )
    finally:
        reader.close()
    assert got == expected
    assert sum(len(got[s.name]) for s in TABLES) > 2 * CHUNK  # more than one chunk a table
    refused = [r for r in got["payments"] if isinstance(r, RefusedRow)]
    assert [(r.column, "32 bits" in r.reason) for r in refused] == [("PaymentTypeID", True)]
    assert got["lines"]  # the orders asked about have lines
    # The overlap's decisions came back: what it skipped, what it recorded for the next.
    assert overlap.skipped == here_overlap.skipped > 0
    assert overlap.packed() == here_overlap.packed() != b""


def _first_rows(
    reader: RowReader, job: ReaderJob, spec: TableSpec
) -> list[PreparedRow | RefusedRow]:
    with reader.snapshot(job) as rows:
        return _flat(rows, spec)


def test_a_body_that_fails_releases_the_snapshot_and_the_reader_serves_the_next(
    source: Settings,
) -> None:
    window, overlap = _window(source)
    reader = RowReader(source, PARTITIONS)
    try:
        with pytest.raises(ZeroDivisionError), reader.snapshot(_job(window, overlap)) as rows:
            next(iter(rows.chunks(TABLES[0], None)))  # type: ignore[arg-type]
            _ = 1 / 0
        # Released: a writer can commit to the source now (SQLite would wait for a
        # reader's snapshot only to checkpoint, so ask the reader to read again instead).
        again = _first_rows(reader, _job(window, overlap), TABLES[0])
        assert again
    finally:
        reader.close()


def test_an_error_in_the_reader_is_raised_here_as_itself(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sync.db"  # an empty database: its tables are missing
    missing.parent.mkdir()
    sqlite3.connect(missing).close()
    settings = load_settings(None, source_url=f"sqlite:///{missing}", source_timezone=ZONE)
    reader = RowReader(settings, PARTITIONS)
    window = Window(
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 2, tzinfo=UTC),
        read_from=datetime(2026, 1, 1, tzinfo=UTC),
    )
    overlap = OverlapFilter(window=window, seen=frozenset(), keep_from=window.end)
    try:
        for _ in range(2):  # and again: the reader is still there
            with pytest.raises(DatabaseAccessError, match="nowhere"):
                _first_rows(reader, _job(window, overlap), TABLES[0])
    finally:
        reader.close()


def test_a_reader_that_dies_fails_the_attempt_and_is_replaced(source: Settings) -> None:
    window, overlap = _window(source)
    reader = RowReader(source, PARTITIONS)
    try:
        with (
            pytest.raises(RetriableError, match="row reader process ended"),
            reader.snapshot(_job(window, overlap)) as rows,
        ):
            pid = reader.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            for spec in TABLES:
                _flat(rows, spec)
        fresh = OverlapFilter(window=window, seen=overlap.seen, keep_from=overlap.keep_from)
        assert _first_rows(reader, _job(window, fresh), TABLES[0])
    finally:
        reader.close()


def test_an_error_answering_a_question_is_raised_to_the_one_who_asked(source: Settings) -> None:
    """The body waits for the reader's answer (which lines an order has now): an error
    instead of the answer is raised there, not waited on (a stopped source did that)."""
    window, overlap = _window(source)
    reader = RowReader(source, PARTITIONS)
    nowhere = TableSpec("no_such_table", "NoSuchTable", ("Id",), "CustomerID")
    try:
        with (
            pytest.raises(KeyError, match="no_such_table"),
            reader.snapshot(_job(window, overlap)) as rows,
        ):
            rows.keys_under(nowhere, {1})
        assert _first_rows(reader, _job(window, overlap), TABLES[0])  # and it serves on
    finally:
        reader.close()


def test_the_reader_does_not_run_the_program_that_started_it(
    source: Settings, tmp_path: Path
) -> None:
    """A script that reads at its top level, without ``if __name__ == "__main__"``, runs
    once: the reader is ``python -m producer.row_process``, not a copy of the script."""
    script = tmp_path / "embedded.py"
    script.write_text(
        "from producer.row_process import RowReader\n"
        "from queuestream.settings import load_settings\n"
        "from queuestream.tables import TABLES\n"
        f"settings = load_settings(None, source_url={source.source_url!r}, "
        f"source_timezone={ZONE!r})\n"
        "print('script ran', flush=True)\n"
        "reader = RowReader(settings, 6)\n"
        "from datetime import UTC, datetime\n"
        "from producer.row_process import ReaderJob\n"
        "from producer.watermark import OverlapFilter, Window\n"
        "now = datetime.now(UTC)\n"
        "window = Window(start=now, end=now, read_from=now)\n"
        "overlap = OverlapFilter(window=window, seen=frozenset(), keep_from=now)\n"
        "with reader.snapshot(ReaderJob(window, overlap)) as rows:\n"
        "    print(sum(len(c) for t in TABLES for c in rows.chunks(t, None)), 'rows')\n"
        "reader.close()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script ran") == 1, done.stdout
    assert "0 rows" in done.stdout


def test_wait_ready_returns_once_the_reader_has_started(source: Settings) -> None:
    """The producer waits for its reader's start (imports, codec: half a second) before it
    says it is ready, so that its first refresh does not: once ``wait_ready`` returns,
    the reader has loaded its Avro codec and answers a snapshot at once."""
    window, overlap = _window(source)
    reader = RowReader(source, PARTITIONS)
    try:
        reader.wait_ready()
        pid = reader.pid()
        assert pid is not None
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "fastavro" in maps, "wait_ready returned before the reader loaded its codec"
        assert _first_rows(reader, _job(window, overlap), TABLES[0]) is not None
    finally:
        reader.close()


def test_a_reader_that_cannot_start_stops_the_command_with_what_to_do(
    source: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an outage to wait out: a reader that ends before its first snapshot (it
    cannot import, say) is a ConfigurationError naming the setting that avoids it."""
    window, overlap = _window(source)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # what the reader is started with
    reader: RowReader | None = None
    try:
        # Said when the reader is started, or at its first snapshot, whichever meets
        # its end first.
        with pytest.raises(ConfigurationError, match="reader_process = false"):
            reader = RowReader(source, PARTITIONS)
            _first_rows(reader, _job(window, overlap), TABLES[0])
    finally:
        if reader is not None:
            reader.close()


def test_the_reader_ends_when_the_producer_is_killed(source: Settings, tmp_path: Path) -> None:
    """A producer killed outright (SIGKILL, the OOM killer) leaves no reader behind: the
    reader reads the end of its pipe and exits."""
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, sys, time\n"
        "from producer.row_process import RowReader\n"
        "from queuestream.settings import load_settings\n"
        f"settings = load_settings(None, source_url={source.source_url!r}, "
        f"source_timezone={ZONE!r})\n"
        "reader = RowReader(settings, 6)\n"
        "print(reader.pid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    producer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert producer.stdout is not None
    reader_pid = int(producer.stdout.readline())
    time.sleep(1.0)  # the reader is up and waiting for its first snapshot
    producer.kill()
    producer.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(reader_pid):
        time.sleep(0.1)
    assert not _alive(reader_pid), "the reader outlived its producer"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_reader_of_a_sqlite_source_loads_no_postgresql_driver() -> None:
    """What the row reader imports to read SQLite leaves psycopg out (its peak RSS is 9 MB
    more with it): PostgreSQL's own reading imports it where it is used."""
    code = (
        "import sys, producer.row_process, producer.sqlite_rows; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_value_of_another_type_is_refused_by_the_reader_as_here(tmp_path: Path) -> None:
    """Text in an amount, a date or an integer column of a SQLite source: the reader
    process refuses the row as this process does (the same dead letter, naming table, key
    and column), and every other row is prepared."""
    settings, keys = wrong_typed_source(tmp_path / "sync.db", ZONE)
    window = Window(start=ALL_TIME[0], end=ALL_TIME[1], read_from=ALL_TIME[0])
    expected = _local(
        settings, window, OverlapFilter(window=window, seen=frozenset(), keep_from=window.start)
    )
    reader = RowReader(settings, PARTITIONS)
    try:
        with reader.snapshot(
            _job(window, OverlapFilter(window=window, seen=frozenset(), keep_from=window.start))
        ) as rows:
            got = {spec.name: _flat(rows, spec) for spec in TABLES}
    finally:
        reader.close()
    assert got == {spec.name: expected[spec.name] for spec in TABLES}
    refused = {r.column: r for r in got["orders"] if isinstance(r, RefusedRow)}
    for table, key, column, _value, why in WRONG_TYPES:
        if table != "Orders":
            continue  # ModifiedDate's row is outside any window
        error = refused[column].error("orders")
        assert (error.key, error.column) == ({key: keys[column]}, column)
        assert why in error.reason
    assert set(refused) == {"Total", "OrderDate", "CustomerID", "WarehouseID"}
    assert len(got["orders"]) > 10
