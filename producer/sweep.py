"""The sweep: the stream comes back to the source (promise 9).

Refreshes publish what changed after the watermark; what they cannot see is
found here. A sweep pass walks each table of the sync database in key order, a
chunk at a time, and compares every row with what the producer knows it
published (:mod:`producer.published_state`):

* a key the state holds but the source no longer has: **deleted**; a delete
  (op ``d``, ``before`` = the row as published) and its tombstone;
* a row stamped before the horizon that the state lacks, or holds at an older
  version: **late** (a writer stamped the past, or a transaction committed
  after its window had passed); published as op ``r``;
* a row whose version the state holds but whose content differs, or whose
  version went back: **repaired** (changed without a new ModifiedDate);
  published as op ``r``, which consumers apply at an equal version;
* a late or repaired row that cannot be encoded: **refused**, a dead letter within the
  error budget (counted instead of late or repaired: it was not published).

The horizon is the watermark minus ``overlap_seconds``: rows at or after it
belong to the refreshes (the next one re-reads the overlap), so the sweep and a
refresh never publish the same version twice. Each chunk with findings is one
batch (mode ``sweep``, BEGIN/END like a refresh) whose END carries the
unchanged watermark and, in ``op_counts``, the findings as
``<table>.sweep.<kind>``; its events, state records and the sweep's position
commit in one Kafka transaction, so a producer killed mid-sweep resumes where
the last committed chunk left it and nothing is published twice. Chunks with
nothing to publish write nothing to Kafka (the position moves in the local
state only). A pass's summary goes to the log, the metrics and the status
topic that the monitor shows.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from producer.batch_writer import BatchWriter
from producer.changed_rows import ChangedRow
from producer.events import RefreshContext, RowPreparer, version_micros
from producer.ids import new_refresh_id
from producer.state_changelog import SWEEP_KEY, Key, Published
from queuestream.batches import BeginMarker
from queuestream.errors import ConfigurationError, EncodingError
from queuestream.tables import TABLES, TABLES_BY_NAME, TableSpec

if TYPE_CHECKING:
    from producer.refresh import Refresher

__all__ = ["KINDS", "SweepReport", "SweepStep", "Sweeper"]

log = logging.getLogger(__name__)

#: What a sweep counts per table.
KINDS = ("checked", "deleted", "late", "repaired", "refused")
#: How a kind reads in a summary, where its name alone would not say it.
_SAID = {"refused": "refused (dead letter)"}


@dataclass
class SweepReport:
    """One pass: when, and what it found per table."""

    started: datetime
    finished: datetime | None = None
    tables: list[str] = field(default_factory=list)
    findings: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, table: str, found: Counter[str]) -> None:
        mine = self.findings.setdefault(table, dict.fromkeys(KINDS, 0))
        for kind, count in found.items():
            mine[kind] = mine.get(kind, 0) + count  # a pass resumed from before "refused"

    def total(self, kind: str) -> int:
        return sum(f.get(kind, 0) for f in self.findings.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started.isoformat(),
            "finished": None if self.finished is None else self.finished.isoformat(),
            "seconds": None
            if self.finished is None
            else round((self.finished - self.started).total_seconds(), 3),
            "tables": self.tables,
            "findings": self.findings,
        }

    def describe(self) -> str:
        found = "; ".join(
            f"{table}: {said}" for table in self.findings if (said := self.found_in(table))
        )
        return (
            f"sweep checked {self.total('checked')} rows of {len(self.tables)} tables: "
            f"{found or 'nothing to publish'}"
        )

    def found_in(self, table: str) -> str:
        """What the pass found in ``table`` ("1 deleted, 1 refused (dead letter)"; "" for
        nothing), each kind in :data:`KINDS` order."""
        counts = self.findings.get(table, {})
        return ", ".join(
            f"{counts[k]} {_SAID.get(k, k)}" for k in KINDS if k != "checked" and counts.get(k)
        )


@dataclass(frozen=True)
class _Position:
    """Where a pass is: the table, and the last key compared (None: from the start)."""

    report: SweepReport
    table: str | None  # None: the pass is finished
    after: Key | None

    def encode(self) -> str:
        return json.dumps(
            {
                **self.report.as_dict(),
                "table": self.table,
                "after": None if self.after is None else list(self.after),
            },
            sort_keys=True,
        )

    @classmethod
    def decode(cls, text: str) -> _Position:
        data = json.loads(text)
        report = SweepReport(
            started=datetime.fromisoformat(data["started"]),
            finished=None if data["finished"] is None else datetime.fromisoformat(data["finished"]),
            tables=list(data["tables"]),
            findings={t: dict(f) for t, f in data["findings"].items()},
        )
        after = data["after"]
        return cls(report, data["table"], None if after is None else (after[0], after[1]))


def _differs(preparer: RowPreparer, changed: ChangedRow, published: bytes) -> bool:
    """Does the row differ from what was published of it? A row that can no longer be
    encoded (a value changed under the same ModifiedDate to one its column cannot hold)
    does: it is published, where it is refused naming its column, a dead letter within
    the error budget."""
    try:
        return preparer.row_bytes(changed) != published
    except EncodingError:
        return True


def _up_to_last_key(
    spec: TableSpec, preparer: RowPreparer, rows: list[ChangedRow], keys: list[Key | None]
) -> tuple[list[ChangedRow], list[Key | None], Key]:
    """A full chunk's rows up to its last with a key the state can hold, and that key:
    where the step's comparison ends and the next step starts. The rows after it (keys
    that are no integers, which SQLite sorts after the numbers) are read again by the next
    step, so each is refused once. A chunk without one such key cannot be walked past."""
    for last in range(len(keys) - 1, -1, -1):
        key = keys[last]
        if key is not None:
            return rows[: last + 1], keys[: last + 1], key
    error = preparer.key_misfit(rows[0].values)
    msg = (
        f"{error}; the sweep cannot walk past {len(rows)} rows of {spec.source} whose keys "
        "are no integers: fix the keys in the source"
    )
    raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True)
class SweepStep:
    """One step: rows compared, events published, the pause the rate limit asks for,
    and the pass's report when this step finished it."""

    table: str
    rows: int
    events: int
    pause: float
    finished: SweepReport | None = None


class Sweeper:
    """Sweeps the source of one :class:`~producer.refresh.Refresher`, a step at a time."""

    def __init__(
        self,
        refresher: Refresher,
        tables: Sequence[str] | None = None,
        chunk: int | None = None,
        max_rows_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = refresher.settings
        if settings.refresh_mode != "watermark":
            msg = (
                "the sweep compares the source with what was published before the "
                "watermark, which procedure mode does not have: sweep in watermark mode"
            )
            raise ConfigurationError(msg)
        unknown = sorted(set(tables or ()) - set(TABLES_BY_NAME))
        if unknown:
            msg = f"no table {', '.join(unknown)} to sweep; choose from {', '.join(TABLES_BY_NAME)}"
            raise ConfigurationError(msg)
        self.refresher = refresher
        self.tables = [t.name for t in TABLES if not tables or t.name in tables]
        self.chunk = chunk or settings.sweep_chunk
        given = max_rows_per_second  # None: the setting's (0 is not "the default")
        self.max_rows_per_second = settings.sweep_max_rows_per_second if given is None else given
        self.clock = clock

    # -- where the pass is ----------------------------------------------------------------
    def position(self) -> _Position | None:
        text = self.refresher.state.meta("sweep")
        return None if text is None else _Position.decode(text)

    def in_progress(self) -> bool:
        position = self.position()
        return (
            position is not None
            and position.table is not None
            and position.report.tables == self.tables
        )

    def due(self, every: float) -> bool:
        """A pass is unfinished, or the last one finished ``every`` seconds ago or more."""
        position = self.position()
        if position is None or position.report.tables != self.tables:
            return True
        if position.table is not None:
            return True
        finished = position.report.finished or position.report.started
        return datetime.now(UTC) - finished >= timedelta(seconds=every)

    def _current(self) -> _Position:
        if self.in_progress():
            position = self.position()
            assert position is not None
            return position
        report = SweepReport(started=datetime.now(UTC), tables=list(self.tables))
        log.info("sweep pass started over %s", ", ".join(self.tables))
        return _Position(report, self.tables[0], None)

    # -- stepping -------------------------------------------------------------------------
    def run_pass(self, on_step: Callable[[SweepStep], None] | None = None) -> SweepReport:
        """Step until the pass (resumed if one is unfinished) is done, at the rate limit."""
        while True:
            step = self.step()
            if on_step is not None:
                on_step(step)
            if step.finished is not None:
                return step.finished
            time.sleep(step.pause)

    def step(self) -> SweepStep:
        """Compare one chunk of one table; publish what it found in one batch."""
        started = self.clock()
        refresher = self.refresher
        progress = refresher.progress
        if progress.watermark is None:
            msg = (
                "nothing published yet: the sweep compares what a refresh published; refresh first"
            )
            raise ConfigurationError(msg)
        horizon = progress.watermark - timedelta(seconds=refresher.settings.overlap_seconds)
        position = self._current()
        assert position.table is not None
        spec = TABLES_BY_NAME[position.table]
        with refresher.reader.frozen() as snapshot:
            rows = snapshot.rows_after(spec, position.after, self.chunk)
        preparer = refresher.parts.builder(spec, _context(refresher)).preparer
        keys = [preparer.state_key(changed) for changed in rows]
        upto = None
        if len(rows) == self.chunk:
            rows, keys, upto = _up_to_last_key(spec, preparer, rows, keys)
        held = dict(refresher.state.between(spec.name, position.after, upto))
        found: Counter[str] = Counter(checked=len(rows))
        upserts: list[tuple[ChangedRow, str]] = []  # and what it was found to be
        zone = refresher.settings.zone
        modified = preparer.layout.modified
        for changed, key in zip(rows, keys, strict=True):
            published = None if key is None else held.pop(key, None)
            stamp = changed.values[modified]
            if key is None or not isinstance(stamp, datetime):
                # A key column or ModifiedDate that SQLite holds as something else (text;
                # no refresh's window of dates selects the latter): published here, where
                # the row is refused naming its column.
                found["late"] += 1
                upserts.append((changed, "late"))
                continue
            stamp = stamp.replace(tzinfo=zone)
            if stamp >= horizon:
                continue  # the refreshes publish it
            version = version_micros(stamp)
            if published is None or version > published.version:
                kind = "late"
            elif version < published.version or _differs(preparer, changed, published.row):
                kind = "repaired"
            else:
                continue
            found[kind] += 1
            upserts.append((changed, kind))
        deletes: list[tuple[Key, Published]] = sorted(held.items())
        found["deleted"] += len(deletes)
        # Where the pass goes next.
        position.report.add(spec.name, found)
        if upto is not None:
            following = _Position(position.report, spec.name, upto)
        else:
            later = self.tables[self.tables.index(spec.name) + 1 :]
            following = _Position(position.report, later[0] if later else None, None)
        if following.table is None:
            position.report.finished = datetime.now(UTC)
        events = 0
        if upserts or deletes:
            events = self._publish(spec, upserts, deletes, found, following)
        else:
            refresher.state.set_meta("sweep", following.encode())
        if following.table is None:
            self._finish(following)
        elapsed = self.clock() - started
        pause = max(0.0, len(rows) / self.max_rows_per_second - elapsed)
        return SweepStep(
            spec.name,
            len(rows),
            events,
            pause,
            position.report if following.table is None else None,
        )

    def _publish(
        self,
        spec: TableSpec,
        upserts: list[tuple[ChangedRow, str]],
        deletes: list[tuple[Key, Published]],
        found: Counter[str],
        following: _Position,
    ) -> int:
        refresher = self.refresher
        progress = refresher.progress
        context = _context(refresher)

        def body(writer: BatchWriter) -> None:
            begin = BeginMarker(context.refresh_id, "sweep", None, progress.watermark)
            writer.begin(begin)
            for key, published in deletes:
                writer.delete(spec, key, published)
            refused: Counter[str] = Counter()
            for changed, kind in upserts:
                if not writer.upsert(spec, changed, "r"):  # a dead letter
                    refused[kind] += 1
            if refused:
                # Not published: refused, not late or repaired, in the report (which the
                # state record below carries) and in the END, which counts dead letters
                # aside as it does events.
                moved = Counter({"refused": refused.total()})
                moved.subtract(refused)
                found.update(moved)
                following.report.add(spec.name, moved)
            writer.state_record(SWEEP_KEY, following.encode().encode())
            writer.end(
                begin,
                extra_counts={
                    f"{spec.name}.sweep.{kind}": n
                    for kind, n in found.items()
                    if kind not in ("checked", "refused")
                },
                snapshot_fingerprint=progress.snapshot_fingerprint,
                overlap_seen=b"".join(sorted(progress.overlap_seen)),
            )
            refresher.state.set_meta("sweep", following.encode())  # commits with the batch

        assert refresher.publisher is not None
        writer = refresher.parts.publish(refresher.publisher, context, body)
        # The END carries the same watermark: only the id of the last batch moves.
        refresher.progress = replace(progress, refresh_id=context.refresh_id)
        log.info(
            "sweep batch %s committed: %s %s",
            context.refresh_id,
            spec.name,
            ", ".join(f"{n} {k}" for k, n in found.items() if n),
        )
        return writer.total

    def _finish(self, position: _Position) -> None:
        """Record the finished pass in the changelog too (a small transaction of its own)."""
        refresher = self.refresher
        value = position.encode().encode()
        assert refresher.publisher is not None
        refresher.publisher.transaction(
            lambda send: send(refresher.parts.state_topic, SWEEP_KEY, value, 0)
        )
        refresher.state.set_meta("sweep", position.encode())
        log.info("%s", position.report.describe())


def _context(refresher: Refresher) -> RefreshContext:
    """A sweep batch's context: its events are re-syncs (``source.snapshot`` true)."""
    return RefreshContext(
        refresh_id=new_refresh_id(),
        prefix=refresher.settings.topic_prefix,
        database=refresher.database,
        schema=refresher.schema,
        window_start=None,
        window_end=refresher.progress.watermark,
        resync=True,
    )
