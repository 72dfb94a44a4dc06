"""PostgreSQL's own maintenance during a run: when autovacuum worked on which database.

On one machine the benchmark's source and targets share the cores with the pipeline,
and so does their maintenance. ``make bench-freshness`` creates its databases for the
run; they grow from a few thousand rows to a few hundred thousand within the minute
of load, and autovacuum visits each of them about once a minute (``autovacuum_naptime``
over the databases), vacuuming and analyzing every table it changed: a second or two
of one worker's CPU on 2 cores that are already most of the time busy. The slowest
refresh of a run often falls in one of those visits. In production the source and the
targets run on servers of their own, with their maintenance.

:class:`AutovacuumWatch` samples ``pg_stat_progress_vacuum`` and
``pg_stat_progress_analyze`` (one query every :data:`EVERY` seconds, in a thread of the
benchmark's process) and keeps, per database, the spans in which a vacuum or an analyze
was seen running. A visit shorter than the sampling interval can be missed, so the
number of runs comes from ``pg_stat_user_tables`` instead (``autovacuum_count`` and
``autoanalyze_count``, read when the watch starts and stops). :func:`overlapping` tells
which databases were being maintained during a span of time (a slow refresh's).
Needs PostgreSQL 13 or later for the analyze progress view; a server that shows no
progress rows (a user without ``pg_read_all_stats`` sees only its own backends) leaves
the spans empty and the counts as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bench.scratch import writer_engine

__all__ = ["EVERY", "AutovacuumWatch", "Span", "merge_spans", "overlapping"]

log = logging.getLogger("bench")

#: Seconds between two samples of the progress views.
EVERY = 0.2
#: Samples of one database closer than this (seconds) belong to the same span.
_JOIN = 3 * EVERY

_PROGRESS = sa.text(
    "SELECT datname FROM pg_stat_progress_vacuum "
    "UNION ALL SELECT datname FROM pg_stat_progress_analyze"
)
_COUNTS = sa.text(
    "SELECT coalesce(sum(autovacuum_count), 0), coalesce(sum(autoanalyze_count), 0) "
    "FROM pg_stat_user_tables"
)

#: (first seen, last seen), in seconds since the epoch.
Span = tuple[float, float]


def merge_spans(times: Iterable[float], join: float = _JOIN) -> list[Span]:
    """The sample times at which a database was seen maintained, as spans: samples
    ``join`` seconds apart or closer make one span."""
    spans: list[list[float]] = []
    for t in sorted(times):
        if spans and t - spans[-1][1] <= join:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return [(a, b) for a, b in spans]


def overlapping(spans: Mapping[str, list[Span]], start: float, end: float) -> list[str]:
    """The databases (by label) with a span that meets ``[start, end]``; a span is widened
    by one sampling interval on each side, the most it can have been longer than seen."""
    return sorted(
        label
        for label, found in spans.items()
        if any(a - EVERY <= end and b + EVERY >= start for a, b in found)
    )


@dataclass
class _Database:
    label: str
    url: str
    counts_at_start: tuple[int, int] | None = None
    counts_at_stop: tuple[int, int] | None = None
    seen: list[float] = field(default_factory=list)


class AutovacuumWatch:
    """Samples the maintenance of the run's databases from :meth:`start` to :meth:`stop`.

    ``databases``: label -> the SQLAlchemy URL of each database (all on one server: the
    progress views show every database's workers, and the first URL reads them).
    """

    def __init__(self, databases: Mapping[str, str]) -> None:
        self._databases = {
            sa.make_url(url).database or label: _Database(label, url)
            for label, url in databases.items()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self) -> None:
        for database in self._databases.values():
            database.counts_at_start = _counts(database.url)
        self._thread = threading.Thread(target=self._sample, name="autovacuum-watch", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Stop sampling (also on a failed run: the thread ends within a sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stop(self, origin: float = 0.0) -> dict[str, Any]:
        """Stop sampling; per label: vacuums and analyzes run meanwhile, the seconds they
        were seen running, and the spans, in seconds after ``origin`` (seconds since the
        epoch: the load's start)."""
        self.halt()
        report: dict[str, Any] = {}
        for database in self._databases.values():
            database.counts_at_stop = _counts(database.url)
            spans = merge_spans(database.seen)
            before, after = database.counts_at_start, database.counts_at_stop
            report[database.label] = {
                "vacuums": after[0] - before[0] if before and after else None,
                "analyzes": after[1] - before[1] if before and after else None,
                "seconds_seen": round(sum(b - a + EVERY for a, b in spans), 1),
                "spans": [(round(a - origin, 1), round(b - origin, 1)) for a, b in spans],
            }
        if self._error:
            log.warning("autovacuum watch stopped early: %s", self._error)
        return report

    def spans(self) -> dict[str, list[Span]]:
        return {d.label: merge_spans(d.seen) for d in self._databases.values()}

    def _sample(self) -> None:
        first = next(iter(self._databases.values()), None)
        if first is None:
            return
        engine = writer_engine(first.url)
        try:
            with engine.connect() as conn:
                while not self._stop.is_set():
                    now = time.time()
                    for (name,) in conn.execute(_PROGRESS):
                        database = self._databases.get(name)
                        if database is not None:
                            database.seen.append(now)
                    conn.rollback()  # each sample in a snapshot of its own
                    self._stop.wait(EVERY)
        except sa.exc.SQLAlchemyError as exc:
            self._error = str(exc).splitlines()[0]
        finally:
            engine.dispose()


def _counts(url: str) -> tuple[int, int] | None:
    """(autovacuum runs, autoanalyze runs) over the database's tables so far."""
    engine = writer_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(_COUNTS).one()
            return int(row[0]), int(row[1])
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not read autovacuum counts: %s", str(exc).splitlines()[0])
        return None
    finally:
        engine.dispose()
