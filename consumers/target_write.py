"""One source table's checked changes into its target table, counted.

:func:`write_rows` takes what :func:`consumers.target_rows.validate` kept of one
source table's changes (one winner per key), upserts and deletes them with the
version rule of :mod:`consumers.target_sql` and counts what they did in the
target's :class:`~consumers.target.ApplyReport`: rows changed by op, events left
stale. :func:`upsert_rows` is its upsert half, for a target that writes some
versions of a key before the newest (the shipping target's earlier order
versions). Rows are tuples of the mapping's columns (:class:`ValidRows`), so
that nothing is built per row beyond what the database is sent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from consumers.changes import Change
from consumers.target import ApplyReport
from consumers.target_rows import Row, ValidRows
from consumers.target_sql import Archive, delete_versioned, upsert_tuples
from queuestream.tables import TABLES_BY_NAME

__all__ = ["Written", "upsert_rows", "write_rows"]


@dataclass
class Written:
    """What :func:`write_rows` wrote."""

    columns: tuple[str, ...]  # the target columns of each row of ``changed``
    changed: list[Row]  # the rows the upserts wrote (newer than what was stored)
    deleted: list[tuple[Any, ...]]  # keys of the valid deletes (applied or not)
    removed: list[tuple[Any, ...]] = field(default_factory=list)  # keys the deletes removed

    def values(self, column: str) -> list[Any]:
        """The values of ``column`` in the rows of :attr:`changed`."""
        i = self.columns.index(column)
        return [row[i] for row in self.changed]


def _key(target: sa.Table) -> tuple[str, ...]:
    return tuple(c.name for c in target.primary_key.columns)


def upsert_rows(
    connection: sa.Connection,
    found: ValidRows,
    target: sa.Table,
    changes: Sequence[Change],
    report: ApplyReport,
) -> list[Row]:
    """Upsert the rows of ``changes`` (one per key); the rows that changed, counted.

    Each row changed counts in ``report.applied["<target table>.<op>"]`` by the op of
    its change, and in ``found.applied``. Re-syncs and repairs (op ``r``) go out in a
    statement of their own, with the repair rule of :func:`upsert_versioned`.
    """
    key = _key(target)
    where = [found.columns.index(k) for k in key]
    rows = found.rows
    changed: list[Row] = []
    for repair in (False, True):
        some = [c for c in changes if (c.op == "r") == repair]
        if not some:
            continue
        values = [rows[id(c)] for c in some]
        returned = upsert_tuples(connection, target, found.columns, values, key, repair=repair)
        if len(returned) == len(values):  # every row changed: no need to tell which
            for op, count in Counter(c.op for c in some).items():
                report.applied[f"{target.name}.{op}"] += count
            changed.extend(values)
            continue
        pairs = zip(some, values, strict=True)
        by_key = {tuple([row[i] for i in where]): (c, row) for c, row in pairs}
        for k in returned:
            change, row = by_key[tuple(k)]
            report.applied[f"{target.name}.{change.op}"] += 1
            changed.append(row)
    found.applied += len(changed)
    return changed


def write_rows(
    connection: sa.Connection,
    found: ValidRows,
    target: sa.Table,
    report: ApplyReport,
    log: logging.Logger,
    *,
    archive: Archive | None = None,
) -> Written:
    """Upsert and delete the winners of ``found``; count the valid changes left stale.

    ``target``'s key is the source table's, column for column. With ``archive``,
    deleted rows are kept there (:class:`Archive`). Valid changes that
    changed nothing (redelivered, older than the stored row, superseded in the batch)
    count in ``report.stale["<source table>"]``. One DEBUG line on ``log``'s child
    for the source table.
    """
    upserts = [w for w in found.winners if w.op != "d"]
    changed = upsert_rows(connection, found, target, upserts, report)
    source_key = TABLES_BY_NAME[found.table].key
    pairs = [(w.key_tuple(source_key), w.version) for w in found.winners if w.op == "d"]
    gone = delete_versioned(connection, target, pairs, _key(target), archive=archive)
    removed = len(gone)
    if removed:
        report.applied[f"{target.name}.d"] += removed
    stale = len(found.valid) - found.applied - removed
    if stale:
        report.stale[found.table] += stale
    log.getChild(found.table).debug(
        "%s: %d events, %d rows changed, %d stale, %d rejected",
        target.name,
        found.events,
        found.applied + removed,
        stale,
        found.events - len(found.valid),
    )
    return Written(found.columns, changed, [k for k, _ in pairs], gone)
