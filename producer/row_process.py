"""Reading and preparing a refresh's rows in a second process, beside publishing them.

Each row of a refresh costs the producer two kinds of Python work: reading it from
the source and encoding what its event takes from the row alone
(:class:`~producer.events.RowPreparer`: op, key, the row's Avro bytes, partition),
then publishing it at its place in the batch (the envelope, the event and its state
record sent, the local state written). One process does one after the other on one
core. With ``reader_process`` on (the default), a second process, started with the
producer and kept for its life, does the first kind: it holds the refresh's
snapshot, reads every table in the refresh's order, prepares each row, and streams
them in chunks through a pipe while this process publishes the chunk before.

Nothing else changes. The snapshot is the reader's single transaction, taken when
the refresh's body asks and released when it has read its last row, as in one
process; the events are the same bytes in the same order (a test compares both
ways); the overlap filter runs in the reader and what it recorded comes back with
each table; a row that cannot be encoded comes back as its dead letter, and the
error budget is spent here. The questions the body asks inside the snapshot (which
lines an order has now) go to the reader and are answered between two chunks.

An error in the reader reaches the body as the same exception (a
DatabaseUnavailableError is waited out like one raised here). A reader that dies
fails the attempt with a RetriableError and is started again for the next one.

The pipe carries, this process to the reader: ``("start", settings, partitions)`` once,
then ``("open", job)``, ``("keys", table,
parents)``, ``("close",)`` (the body is done) and ``("cancel",)`` (the body failed);
the reader to this process: ``("ready",)`` once it has started (its imports, the
codec), ``("opened",)``, ``("rows", table, prepared)``,
``("table", table, recorded, skipped)`` at the end of each table, ``("read",)``
after the last, ``("keys", found)``, ``("closed",)`` once the snapshot is released,
and ``("error", report)``.
"""

from __future__ import annotations

import logging
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from producer.events import PreparedRow, RefusedRow, RowPreparer
from producer.partitioning import CustomerPartitioner
from producer.sensitive import column_policy
from producer.source_reader import FrozenSnapshot, SourceReader
from producer.state_changelog import Key
from producer.watermark import DigestMemo, OverlapFilter, Window
from producer.window_rows import window_rows
from queuestream import errors
from queuestream.databases import create_engine
from queuestream.errors import ConfigurationError, FatalError, QueuestreamError, RetriableError
from queuestream.gc_tuning import tune_for_streaming
from queuestream.settings import Settings
from queuestream.tables import TABLES, TABLES_BY_NAME, TableSpec
from schemas.avro import AvroCodec

if TYPE_CHECKING:
    from producer.batch_writer import BatchWriter

__all__ = ["ReaderJob", "RowReader"]

log = logging.getLogger(__name__)

#: Prepared rows per message: large enough that the pipe costs little per row, small
#: enough that the reader runs at most a chunk or two ahead (memory stays flat).
CHUNK = 1000
#: How long a cancelled reader may take to release its snapshot before it is replaced.
_CANCEL_SECONDS = 30.0
#: How long the reader may take to start (imports, schema registry) and take a snapshot.
_OPEN_SECONDS = 120.0


@dataclass(frozen=True)
class ReaderJob:
    """One refresh's reading: a window with its overlap filter (watermark mode), or the
    queue tables as they are, checked against ``fingerprint`` (procedure mode)."""

    window: Window | None = None
    overlap: OverlapFilter | None = None
    fingerprint: str | None = None
    #: The op of a row: ``r`` throughout a re-sync; otherwise ``c`` for a row created at
    #: or after the window's start, ``u`` before it.
    resync: bool = False

    @property
    def window_start(self) -> datetime | None:
        return None if self.window is None else self.window.start


@dataclass(frozen=True)
class _ErrorReport:
    """An exception raised in the reader, as it can cross the pipe."""

    exception: BaseException | None  # itself, when it survives pickling
    module: str
    name: str
    message: str
    trace: str


class RowReader:
    """This process's end: starts the reader and hands out snapshots of it."""

    def __init__(self, settings: Settings, partitions: int) -> None:
        self.settings = settings
        self.partitions = partitions
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._pending: deque[tuple[Any, ...]] = deque()
        #: A reader has opened a snapshot: one that ends later failed, not its start.
        self._has_served = False
        self._ready = False
        self._start()

    def _start(self) -> None:
        """``python -m producer.row_process`` with one end of a socket pair: it imports
        what reading needs and nothing of the program that started it (multiprocessing's
        spawn would run that program's main module again in it)."""
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._pending.clear()
        self._ready = False
        self._send(("start", self.settings, self.partitions))

    def wait_ready(self) -> None:
        """Wait until the reader has started (half a second of imports and codec), so that
        the first refresh does not wait for it. A reader that could not start says why
        at the first snapshot, as before."""
        if not self._ready:
            self._expect("ready", _OPEN_SECONDS)
            self._ready = True

    def pid(self) -> int | None:
        """The reader's process id, while it runs."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Stop the reader (it ends by itself too once this process has gone)."""
        if self._conn is not None:
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None

    def _restart(self) -> None:
        self.close()
        self._start()

    # -- one snapshot --------------------------------------------------------------------
    @contextmanager
    def snapshot(self, job: ReaderJob) -> Iterator[ReaderSource]:
        """The reader's snapshot for one refresh, streaming its rows from the start.

        Left normally, the snapshot is released (and any error the reader met at the end
        is raised); left by an exception, the reader is told to stop and release it.
        """
        if self._process is None or self._process.poll() is not None:
            self._restart()
        self.wait_ready()
        self._send(("open", job))
        self._expect("opened", _OPEN_SECONDS)
        self._has_served = True
        source = ReaderSource(self, job.overlap, rows_in_snapshot=job.window is not None)
        try:
            yield source
        except BaseException:
            self._cancel()
            raise
        self._send(("close",))
        while self._receive()[0] != "closed":
            pass

    # -- the pipe --------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The next message (an error raised); those set aside by :meth:`keys_under` first."""
        if self._pending:
            message = self._pending.popleft()
        else:
            message = self._recv(timeout)
        if message[0] == "error":
            raise _rebuilt(message[1])
        return message

    def _recv(self, timeout: float | None) -> tuple[Any, ...]:
        assert self._conn is not None
        try:
            if timeout is not None and not self._conn.poll(timeout):
                self._restart()
                msg = f"the row reader did not answer within {timeout:.0f}s; it was restarted"
                raise RetriableError(msg)
            message: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        return message

    def _expect(self, kind: str, timeout: float | None = None) -> tuple[Any, ...]:
        message = self._receive(timeout)
        if message[0] != kind:
            msg = f"the row reader sent {message[0]!r} where {kind!r} was due"
            raise FatalError(msg)
        return message

    def _gone(self) -> QueuestreamError:
        """The pipe broke: the reader ended (or is made to), and is started again by the
        next snapshot. What to raise about it."""
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait(5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if not self._has_served:
            return ConfigurationError(
                f"the row reader process (python -m {__name__}) ended before it could read "
                f"(exit code {code}; its error is above); fix what it says, or set "
                "reader_process = false (QUEUESTREAM_READER_PROCESS=false) to read in this "
                "process"
            )
        return RetriableError(
            f"the row reader process ended (exit code {code}); nothing was committed, and "
            "a new one reads the refresh again"
        )

    def _cancel(self) -> None:
        """Stop the reader's work and wait for its snapshot to be released (or replace it)."""
        if self._conn is None:
            return
        try:
            self._conn.send(("cancel",))
            self._pending.clear()
            while True:
                if not self._conn.poll(_CANCEL_SECONDS):
                    log.warning(
                        "the row reader did not stop within %.0fs: restarted", _CANCEL_SECONDS
                    )
                    self._restart()
                    return
                if self._conn.recv()[0] == "closed":
                    return
        except (EOFError, OSError):
            self._gone()

    # -- what the body asks ---------------------------------------------------------------
    def chunks(
        self, spec: TableSpec, overlap: OverlapFilter | None
    ) -> Iterator[Sequence[PreparedRow | RefusedRow]]:
        """``spec``'s prepared rows, as the reader sent them: a chunk at a time."""
        while True:
            message = self._receive()
            kind = message[0]
            if kind in ("rows", "table") and message[1] != spec.name:
                msg = f"the row reader sent {message[1]}'s rows where {spec.name}'s were due"
                raise FatalError(msg)
            if kind == "rows":
                yield message[2]
            elif kind == "table":
                if overlap is not None:
                    overlap.recorded.extend(message[2])
                    overlap.skipped += message[3]
                return
            else:
                msg = f"the row reader sent {kind!r} in {spec.name}'s rows"
                raise FatalError(msg)

    def keys_under(self, spec: TableSpec, parents: set[int]) -> set[Key]:
        """Asked of the reader's snapshot; its rows that come meanwhile are set aside."""
        self._send(("keys", spec.name, parents))
        while True:
            message = self._recv(None)
            if message[0] == "keys":
                found: set[Key] = message[1]
                return found
            if message[0] == "error":
                raise _rebuilt(message[1])
            self._pending.append(message)


@dataclass(frozen=True)
class ReaderSource:
    """What a refresh body reads from the reader's snapshot (see ``RefreshSource``)."""

    reader: RowReader
    overlap: OverlapFilter | None
    rows_in_snapshot: bool

    def chunks(
        self, spec: TableSpec, _writer: BatchWriter
    ) -> Iterator[Sequence[PreparedRow | RefusedRow]]:
        return self.reader.chunks(spec, self.overlap)

    def keys_under(self, spec: TableSpec, parents: set[int]) -> set[Key]:
        return self.reader.keys_under(spec, parents)


def _rebuilt(report: _ErrorReport) -> BaseException:
    """The reader's exception as this process raises it."""
    if report.exception is not None:
        return report.exception
    cls = getattr(errors, report.name, None) if report.module == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, errors.QueuestreamError):
        try:
            return cls(report.message)
        except TypeError:
            pass
    return FatalError(f"the row reader failed: {report.name}: {report.message}\n{report.trace}")


def _report(exc: BaseException) -> _ErrorReport:
    kept: BaseException | None = exc
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        kept = None
    return _ErrorReport(
        kept,
        type(exc).__module__,
        type(exc).__name__,
        str(exc),
        "".join(traceback.format_exception(exc)),
    )


# -- the reader process ------------------------------------------------------------------------
class _Closed(Exception):
    """The body is done with the snapshot (close) or gave up on it (cancel)."""


class _Reader:
    """The reader's side: one source connection, one codec (with the tables' row encoders)."""

    def __init__(self, conn: Connection, settings: Settings, partitions: int) -> None:
        self.conn = conn
        self.settings = settings
        engine = create_engine(settings.source_url, existing="the sync database")
        self.source = SourceReader(engine, settings)
        self.codec = AvroCodec.from_url(settings.topic_prefix, settings.schema_registry_url)
        self.policy = column_policy(settings)
        self.partitioner = CustomerPartitioner(partitions)
        self.digests = DigestMemo(settings.zone)

    def run(self) -> None:
        while True:
            message = self.conn.recv()
            kind = message[0]
            if kind == "stop":
                return
            if kind == "open":
                self._job(message[1])
                self.digests.versions.prepare_next()  # while the producer commits and waits
            elif kind in ("close", "cancel"):  # after an error: nothing is open
                self.conn.send(("closed",))

    def _job(self, job: ReaderJob) -> None:
        try:
            with self.source.frozen() as snapshot:
                if job.fingerprint is not None:
                    snapshot.check_fingerprint(job.fingerprint)
                self.conn.send(("opened",))
                try:
                    self._stream(snapshot, job)
                    self.conn.send(("read",))
                    while True:
                        self._answer(self.conn.recv(), snapshot)
                except _Closed:
                    pass
            self.conn.send(("closed",))
        except Exception as exc:
            self.conn.send(("error", _report(exc)))

    def _stream(self, snapshot: FrozenSnapshot, job: ReaderJob) -> None:
        zone = self.settings.zone
        self.digests.next_refresh()
        overlap = job.overlap
        conn = self.conn
        for spec in TABLES:
            prepare = RowPreparer(
                spec,
                self.codec,
                self.policy,
                self.partitioner,
                zone,
                job.window_start,
                job.resync,
            ).prepare
            if job.window is not None:
                assert overlap is not None  # a window has its overlap
                rows = window_rows(snapshot, spec, job.window, overlap, zone, self.digests)
                recorded, skipped = len(overlap.recorded), overlap.skipped
            else:
                rows = snapshot.queue_rows(spec)
            chunk: list[PreparedRow | RefusedRow] = []
            for changed in rows:
                chunk.append(prepare(changed))
                if len(chunk) >= CHUNK:
                    conn.send(("rows", spec.name, chunk))
                    chunk = []
                    while conn.poll():
                        self._answer(conn.recv(), snapshot)
            if chunk:
                conn.send(("rows", spec.name, chunk))
            if overlap is not None:
                conn.send(
                    ("table", spec.name, overlap.recorded[recorded:], overlap.skipped - skipped)
                )
            else:
                conn.send(("table", spec.name, [], 0))

    def _answer(self, message: tuple[Any, ...], snapshot: FrozenSnapshot) -> None:
        kind = message[0]
        if kind == "keys":
            spec = TABLES_BY_NAME[message[1]]
            self.conn.send(("keys", snapshot.keys_under(spec, message[2])))
        elif kind in ("close", "cancel"):
            raise _Closed
        elif kind == "stop":
            raise SystemExit(0)


def serve(conn: Connection) -> None:
    """The reader process: told its settings first, it serves snapshots until told to
    stop or this pipe closes.

    It ignores SIGINT and SIGTERM: a producer told to stop finishes the refresh in
    hand, with its reader, then stops the reader (Ctrl-C reaches both processes).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_for_streaming()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s row reader: %(message)s"
    )
    # The producer logs what the settings warn of; the reader only what goes wrong in it.
    logging.getLogger("producer.sensitive").setLevel(logging.ERROR)
    try:
        _kind, settings, partitions = conn.recv()
        reader = _Reader(conn, settings, partitions)
    except (EOFError, OSError):
        return  # the producer went away
    except Exception as exc:  # reported at the first snapshot
        _refuse_every_snapshot(conn, _report(exc))
        return
    try:
        conn.send(("ready",))
        reader.run()
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the producer went away


def _refuse_every_snapshot(conn: Connection, report: _ErrorReport) -> None:
    """A reader that could not start answers every snapshot with why."""
    try:
        conn.send(("ready",))  # to answer
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            if message[0] == "open":
                conn.send(("error", report))
            elif message[0] in ("close", "cancel"):
                conn.send(("closed",))
    except (EOFError, OSError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    # The module's own copy, not __main__'s: what it sends names producer.row_process.
    from producer.row_process import serve as _serve

    _serve(Connection(int(sys.argv[1])))
