"""What a target is, and the SQL pieces every target builds on.

A target turns change events into rows of its own schema. The runtime hands it
one batch at a time (the changes of one or more refreshes that this instance
owns, table by table in foreign-key order) inside an open database transaction,
and commits the batch together with the consumed offsets. A target therefore
never commits, never talks to Kafka and never retries: it maps, validates and
writes.

Every row a target derives from a source row carries ``source_version`` (the
source's ModifiedDate in microseconds). :func:`upsert_versioned` writes with
"insert or update, identified by <key>" and a version check, so a redelivered or
stale event changes nothing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from consumers.changes import Change
from consumers.reconcile import TableImage
from queuestream.errors import RecordError
from queuestream.tables import TABLES

__all__ = [
    "ApplyReport",
    "Money",
    "Rejected",
    "Target",
    "check_currency",
    "check_length",
    "delete_versioned",
    "latest_per_key",
    "ordered_tables",
    "upsert_versioned",
    "version_column",
]


class Money(sa.types.TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC(p, s) on PostgreSQL, integer minor units on SQLite.

    SQLite has no exact decimal type (NUMERIC there is a float), so amounts are
    stored as integers scaled by 10**scale; SUM() stays exact and values read
    back through this type as Decimal. On PostgreSQL the column is a plain NUMERIC.
    """

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: int = 16, scale: int = 2) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._factor = Decimal(10) ** scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value)
        if dialect.name == "sqlite":
            return int((exact * self._factor).to_integral_value())
        return exact

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / self._factor).quantize(self._quantum)
        return Decimal(value).quantize(self._quantum)


@dataclass(slots=True)
class Rejected:
    """A change the target could not apply, and why."""

    change: Change
    error: RecordError


@dataclass
class ApplyReport:
    """What a target did with one batch: counted by the runtime into the sync log."""

    applied: Counter[str] = field(default_factory=Counter)  # "<table>.<op>" -> rows changed
    stale: Counter[str] = field(default_factory=Counter)  # "<table>" -> events that changed nothing
    rejected: list[Rejected] = field(default_factory=list)

    def reject(self, change: Change, error: RecordError) -> None:
        self.rejected.append(Rejected(change, error))

    @property
    def rows(self) -> int:
        return sum(self.applied.values())


class Target(ABC):
    """A sample target. Subclasses set ``name``, ``tables``, ``metadata`` and apply."""

    #: "accounting" or "shipping": the command argument and the default group suffix.
    name: ClassVar[str]
    #: The source tables (contract names) this target consumes, in apply order.
    tables: ClassVar[tuple[str, ...]]
    #: The target's own tables.
    metadata: ClassVar[sa.MetaData]

    def create_schema(self, connection: sa.Connection) -> None:
        """Create the target's tables and views where missing (idempotent)."""
        self.metadata.create_all(connection)

    @abstractmethod
    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        """Apply one batch. ``changes`` maps each of ``tables`` to its changes in order.

        Raise nothing for a bad record: ``report.reject`` it (the runtime sends it to
        the dead-letter topic within the error budget). Database errors propagate.
        """

    # -- reconciliation (queuestream verify) ---------------------------------------
    @abstractmethod
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """What this target should hold, computed straight from the source tables.

        ``zone`` is the source's time zone (its timestamps are naive local time).
        Keys are this target's table names; see :mod:`consumers.reconcile`.
        """

    @abstractmethod
    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """What this target holds, in the same shape as :meth:`expected`."""


def version_column() -> sa.Column[int]:
    """The ``source_version`` column every derived row carries."""
    return sa.Column(
        "source_version",
        sa.BigInteger,
        nullable=False,
        comment="source ModifiedDate, microseconds since 1970-01-01 UTC; only newer replaces",
    )


def ordered_tables(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in foreign-key (apply) order."""
    wanted = set(names)
    return tuple(t.name for t in TABLES if t.name in wanted)


def latest_per_key(changes: Sequence[Change], key: Sequence[str]) -> list[Change]:
    """One change per key: the highest version (the later offset on a tie).

    A statement may not touch a row twice (PostgreSQL refuses ON CONFLICT DO UPDATE
    on the same key twice), and only the newest version matters to the result.
    """
    best: dict[tuple[Any, ...], Change] = {}
    for change in changes:
        k = tuple(change.key[c] for c in key)
        seen = best.get(k)
        if seen is None or change.version >= seen.version:
            best[k] = change
    return list(best.values())


def _insert(connection: sa.Connection, table: sa.Table) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table)
    msg = f"unsupported target dialect {connection.dialect.name}"
    raise NotImplementedError(msg)


def upsert_versioned(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str],
    *,
    version_column: str = "source_version",
) -> list[tuple[Any, ...]]:
    """Insert or update ``rows`` identified by ``key``, only where the version is newer.

    Each row must hold every column it sets and ``version_column``. Rows whose stored
    version is the same or newer are left alone. Returns the keys that changed.
    ``rows`` must not repeat a key (see :func:`latest_per_key`).

    On PostgreSQL the rows travel as one array per column, turned back into rows by
    ``unnest``: one short statement instead of multi-row VALUES pages with thousands
    of placeholders (about 3x faster). The arrays have unbounded element types
    (text, numeric), so the assignment to each column still refuses what does not fit.
    """
    if not rows:
        return []
    columns = list(rows[0])
    insert: Any
    if connection.dialect.name == "postgresql":
        arrays = [
            sa.bindparam(
                f"{name}_values",
                [row[name] for row in rows],
                type_=postgresql.ARRAY(_element_type(table.c[name])),
            )
            for name in columns
        ]
        incoming = sa.func.unnest(*arrays).table_valued(*columns).render_derived(name="incoming")
        insert = postgresql.insert(table).from_select(
            columns, sa.select(*(incoming.c[name] for name in columns))
        )
        parameters: Any = None
    else:
        insert = _insert(connection, table)
        parameters = list(rows)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c[k] for k in key],
        set_={c: insert.excluded[c] for c in columns if c not in key},
        where=table.c[version_column] < insert.excluded[version_column],
    ).returning(*(table.c[k] for k in key))
    result = connection.execute(statement, parameters)
    return [tuple(r) for r in result]


def _element_type(column: sa.Column[Any]) -> sa.types.TypeEngine[Any]:
    if isinstance(column.type, Money | sa.Numeric):
        return sa.Numeric(asdecimal=True)
    if isinstance(column.type, sa.String):
        return sa.Text()
    return column.type


def delete_versioned(
    connection: sa.Connection,
    table: sa.Table,
    keys: Sequence[tuple[tuple[Any, ...], int]],
    key: Sequence[str],
    *,
    version_column: str = "source_version",
) -> int:
    """Delete rows by key where the stored version is not newer than the delete's."""
    removed = 0
    for values, version in keys:
        condition = sa.and_(
            *(table.c[k] == v for k, v in zip(key, values, strict=True)),
            table.c[version_column] <= version,
        )
        removed += connection.execute(sa.delete(table).where(condition)).rowcount or 0
    return removed


_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


def check_currency(change: Change, column: str = "CurrencyCode") -> str:
    """The ISO 4217 code in ``column``, upper-cased, or a RecordError naming it."""
    assert change.row is not None
    value = change.row.get(column)
    if not isinstance(value, str) or not _CURRENCY.match(value):
        msg = f"{value!r} is not a three-letter ISO 4217 currency code"
        raise RecordError(msg, table=change.table, key=dict(change.key), column=column)
    return value.upper()


def check_length(change: Change, column: str, limit: int) -> str | None:
    """The text in ``column`` if it fits ``limit`` characters, else a RecordError naming it."""
    assert change.row is not None
    value = change.row.get(column)
    if value is not None and not isinstance(value, str):
        msg = f"expected text, got {type(value).__name__}"
        raise RecordError(msg, table=change.table, key=dict(change.key), column=column)
    if value is not None and len(value) > limit:
        msg = f"{len(value)} characters do not fit the target column of {limit}"
        raise RecordError(msg, table=change.table, key=dict(change.key), column=column)
    return value
