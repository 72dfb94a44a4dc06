"""Reconciliation: does a target hold exactly what the source says it should?

Each target describes, per table, the rows it expects from the source database
(computed straight from the source tables, not from events) and the rows it
holds. Both sides are :class:`TableImage` objects: key -> (version, compared
values), plus the names of money columns among them. The report compares row
counts, sums of the money columns and a checksum of keys, versions and values,
and names a few differing keys so that a mismatch can be looked up.

Instants compare as instants: :class:`TableImage` keeps a datetime as ISO text in
UTC, whether it comes aware (PostgreSQL, or the source read through
:func:`source_instant`) or naive UTC (SQLite). The source stamps naive local times
in its own zone: :func:`source_version` and :func:`source_instant` read them as a
change event carries them. Each sample target states its images in its own
``reconcile`` module (:mod:`consumers.accounting.reconcile`,
:mod:`consumers.shipping.reconcile`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.changes import version_of
from queuestream.source_values import to_aware

__all__ = [
    "Reconciliation",
    "TableCheck",
    "TableImage",
    "compare",
    "source_instant",
    "source_table",
    "source_version",
]

_SAMPLE = 5


@dataclass
class TableImage:
    """Rows of one table: key -> values, in ``columns`` order (money columns by name)."""

    columns: tuple[str, ...]
    money: tuple[str, ...] = ()
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)

    def add(self, key: tuple[Any, ...], values: Mapping[str, Any]) -> None:
        self.rows[key] = tuple(_canonical(values[c]) for c in self.columns)

    def read(self, connection: sa.Connection, table: sa.Table) -> None:
        """Add every row of ``table`` (or view), keyed by its primary key."""
        key = [c.name for c in table.primary_key.columns]
        for row in connection.execute(sa.select(table)):
            values = dict(row._mapping)
            self.add(tuple(values[k] for k in key), values)

    def sums(self) -> dict[str, Decimal]:
        found: dict[str, Decimal] = {}
        for name in self.money:
            i = self.columns.index(name)
            found[name] = sum(
                (Decimal(r[i]) for r in self.rows.values() if r[i] is not None), Decimal(0)
            )
        return found

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.rows, key=repr):
            digest.update(repr((key, self.rows[key])).encode())
        return digest.hexdigest()[:16]


def source_table(name: str) -> sa.Table:
    """The sync database's table behind a contract table name such as ``order_details``.

    Its models, and SQLAlchemy's ORM with them, are imported here, by the first
    reconciliation (``queuestream verify``): a consumer that only applies events does
    not load them (about 0.1 s of its start, and of each rebuild worker's).
    """
    from queuestream.sync_schema import source_table as table

    return table(name)


def source_version(moment: datetime, zone: ZoneInfo) -> int:
    """The version of a source row stamped ``moment`` (naive local time in ``zone``)."""
    return version_of(to_aware(moment, zone))


def source_instant(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    """A source timestamp (naive local time in ``zone``) as an aware instant."""
    return None if moment is None else to_aware(moment, zone)


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 12.30 and 12.3 are the same amount
    if isinstance(value, datetime):
        # SQLite hands back naive UTC, PostgreSQL aware: compare the instants.
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    return value


@dataclass
class TableCheck:
    table: str
    expected_rows: int
    actual_rows: int
    expected_sums: dict[str, Decimal]
    actual_sums: dict[str, Decimal]
    expected_checksum: str
    actual_checksum: str
    missing: list[tuple[Any, ...]]  # expected, not in the target (a sample)
    unexpected: list[tuple[Any, ...]]  # in the target, not expected (a sample)
    different: list[tuple[Any, ...]]  # in both, with other values (a sample)

    @property
    def ok(self) -> bool:
        return (
            self.expected_rows == self.actual_rows
            and self.expected_sums == self.actual_sums
            and self.expected_checksum == self.actual_checksum
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "ok": self.ok,
            "rows": {"expected": self.expected_rows, "actual": self.actual_rows},
            "sums": {
                name: {
                    "expected": str(self.expected_sums[name]),
                    "actual": str(self.actual_sums.get(name)),
                }
                for name in self.expected_sums
            },
            "checksum": {"expected": self.expected_checksum, "actual": self.actual_checksum},
            "missing": [list(k) for k in self.missing],
            "unexpected": [list(k) for k in self.unexpected],
            "different": [list(k) for k in self.different],
        }


@dataclass
class Reconciliation:
    target: str
    checks: list[TableCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "tables": [c.as_dict() for c in self.checks]}


def compare(
    target: str,
    expected: Mapping[str, TableImage],
    actual: Mapping[str, TableImage],
    order: Sequence[str] | None = None,
) -> Reconciliation:
    checks = []
    for name in order or list(expected):
        want, have = expected[name], actual[name]
        missing = [k for k in want.rows if k not in have.rows]
        unexpected = [k for k in have.rows if k not in want.rows]
        different = [k for k in want.rows if k in have.rows and want.rows[k] != have.rows[k]]
        checks.append(
            TableCheck(
                table=name,
                expected_rows=len(want.rows),
                actual_rows=len(have.rows),
                expected_sums=want.sums(),
                actual_sums=have.sums(),
                expected_checksum=want.checksum(),
                actual_checksum=have.checksum(),
                missing=sorted(missing, key=repr)[:_SAMPLE],
                unexpected=sorted(unexpected, key=repr)[:_SAMPLE],
                different=sorted(different, key=repr)[:_SAMPLE],
            )
        )
    return Reconciliation(target, checks)
