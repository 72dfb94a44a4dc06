"""The SQL every target builds on: exact money, versioned writes, key filters.

Every row a target derives from a source row carries ``source_version`` (the
source's ModifiedDate in microseconds, :func:`version_column`).
:func:`upsert_versioned` writes with "insert or update, identified by <key>" and a
version check, and :func:`delete_versioned` deletes only what is not newer than
the delete, so a redelivered or stale event changes nothing.

The version rule, by op: ``c`` and ``u`` replace a row only with a strictly newer
version. ``r`` (a re-sync, or a sweep's repair: the row read again from the
source, possibly changed without a new ModifiedDate) replaces it with a newer or
an *equal* version whose values differ (:func:`newer_or_repair`): a repair is
told from a stale event by its op, and from a redelivery by its values, so a
replayed repair still counts as stale. ``d`` deletes where the stored version is
not newer than the delete's (``before.ModifiedDate``). An older version never
replaces a newer one. :func:`write_rows`
(:mod:`consumers.target_write`) writes the changes of one source table that passed
the checks (:func:`consumers.target_rows.validate`) that way and counts what they did.

Sets of keys (the orders a batch touched, say) reach SQL through one filter,
:func:`queuestream.key_sets.among`, which the producer's source reader shares;
:func:`upsert_versioned` types its arrays the same way (the unbounded form of the
column's type), so a value matches exactly the rows that hold it, on both databases.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from consumers.target_stage import copy_into_stage, render, stage_table
from queuestream.key_sets import element_type

__all__ = [
    "DELETED_VERSION",
    "INSERTED_AS",
    "STAGED_WRITES",
    "UPDATED_AS",
    "Archive",
    "Money",
    "delete_versioned",
    "dialect_insert",
    "newer_or_repair",
    "staged",
    "upsert_tuples",
    "upsert_versioned",
    "version_column",
]

#: The execution option that turns PostgreSQL's bulk path off (:func:`staged`).
STAGED_WRITES = "queuestream_staged_writes"
#: The column of an :class:`Archive` table that holds the version of the delete.
DELETED_VERSION = "deleted_version"
#: A column's ``info`` key: how a row the bulk path inserts sets this column where the
#: incoming rows do not (a function of the incoming row's columns, giving an
#: expression), instead of its default; an update leaves it as it is, as it leaves
#: every column the rows do not set. Only for values the target recomputes anyway
#: (a maintained figure): the other paths insert the default, and the recomputation
#: brings both to the same row; the bulk path only spares it a write.
INSERTED_AS = "queuestream_inserted_as"
#: A column's ``info`` key: what an update of a stored row sets this column to where the
#: incoming rows do not set it (a function of the incoming row's columns and the stored
#: row's, giving an expression), on every path. For a maintained figure that follows
#: both: the row's write brings it up to date, and no recomputation has to read the row
#: again for it.
UPDATED_AS = "queuestream_updated_as"


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


def version_column() -> sa.Column[int]:
    """The ``source_version`` column every derived row carries."""
    return sa.Column(
        "source_version",
        sa.BigInteger,
        nullable=False,
        comment="source ModifiedDate, microseconds since 1970-01-01 UTC; only newer replaces",
    )


def dialect_insert(dialect: str) -> Any:
    """The INSERT construct with ON CONFLICT of a target dialect (PostgreSQL, SQLite)."""
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    msg = f"unsupported target dialect {dialect}"
    raise NotImplementedError(msg)


# -- versioned writes -----------------------------------------------------------------
def newer_or_repair(
    stored: sa.Table, incoming: Any, columns: Iterable[str], version_column: str
) -> sa.ColumnElement[bool]:
    """The incoming row is newer, or as new with other values in ``columns`` (a repair)."""
    held, offered = stored.c[version_column], incoming[version_column]
    differs = [stored.c[c].is_distinct_from(incoming[c]) for c in columns if c != version_column]
    return sa.or_(held < offered, sa.and_(held == offered, sa.or_(sa.false(), *differs)))


def upsert_versioned(
    connection: sa.Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str],
    *,
    version_column: str = "source_version",
    repair: bool = False,
) -> list[tuple[Any, ...]]:
    """Insert or update ``rows`` identified by ``key``, only where the version is newer.

    Each row must hold every column it sets and ``version_column``. Rows whose stored
    version is the same or newer are left alone; with ``repair`` (op ``r``) a row of
    the same version replaces the stored one where their values differ
    (:func:`newer_or_repair`). Returns the keys that changed.
    ``rows`` must not repeat a key (see :func:`consumers.target_rows.latest_per_key`).
    :func:`upsert_tuples` does the same with rows as tuples.
    """
    if not rows:
        return []
    columns = tuple(rows[0])
    values = [tuple(row[c] for c in columns) for row in rows]
    return upsert_tuples(
        connection, table, columns, values, key, version_column=version_column, repair=repair
    )


def staged(connection: sa.Connection) -> bool:
    """Whether writes on ``connection`` take PostgreSQL's bulk path (:mod:`.target_stage`).

    They do on PostgreSQL unless the execution option :data:`STAGED_WRITES` is False
    (the statements with parameter arrays that came before, kept as the reference the
    equivalence tests compare the bulk path with).
    """
    if connection.dialect.name != "postgresql":
        return False
    return bool(connection.get_execution_options().get(STAGED_WRITES, True))


def upsert_tuples(
    connection: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
    *,
    version_column: str = "source_version",
    repair: bool = False,
) -> list[tuple[Any, ...]]:
    """:func:`upsert_versioned` of ``rows``, tuples of the values of ``columns``.

    On PostgreSQL the rows travel by binary COPY into a staging table, merged by one
    ``INSERT ... SELECT ... ON CONFLICT`` (:mod:`consumers.target_stage`). With
    :data:`STAGED_WRITES` off they travel as one array per column, turned back into
    rows by ``unnest``; on SQLite as executemany parameters.
    """
    if not rows:
        return []
    names, key = tuple(columns), tuple(key)
    if staged(connection):
        stage = stage_table(table, names, "up")
        merge = _staged_upsert(table, stage, key, version_column, repair)
        return copy_into_stage(connection, stage, rows, [merge])
    insert: Any
    parameters: Any = None
    if connection.dialect.name == "postgresql":
        arrays = [
            sa.bindparam(
                f"{name}_values",
                [row[i] for row in rows],
                type_=postgresql.ARRAY(element_type(table.c[name].type)),
            )
            for i, name in enumerate(names)
        ]
        incoming = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="incoming")
        insert = postgresql.insert(table).from_select(
            names, sa.select(*(incoming.c[name] for name in names))
        )
    else:
        insert = dialect_insert(connection.dialect.name)(table)
        parameters = [dict(zip(names, row, strict=True)) for row in rows]
    statement = _on_conflict(insert, table, names, key, version_column, repair)
    result = connection.execute(statement, parameters)
    return [tuple(r) for r in result]


def _on_conflict(
    insert: Any,
    table: sa.Table,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    version_column: str,
    repair: bool,
) -> Any:
    """``insert`` ON CONFLICT (key) DO UPDATE where the version rule allows, RETURNING key.

    The update sets the incoming columns, and those the rows do not set that follow
    them (:data:`UPDATED_AS`)."""
    values = [c for c in columns if c not in key]
    if repair:
        newer = newer_or_repair(table, insert.excluded, values, version_column)
    else:
        newer = table.c[version_column] < insert.excluded[version_column]
    updated: dict[str, Any] = {c: insert.excluded[c] for c in values}
    updated.update(
        (c.name, c.info[UPDATED_AS](insert.excluded, table.c))
        for c in table.columns
        if c.name not in columns and UPDATED_AS in c.info
    )
    return insert.on_conflict_do_update(
        index_elements=[table.c[k] for k in key], set_=updated, where=newer
    ).returning(*(table.c[k] for k in key))


@functools.cache
def _staged_upsert(
    table: sa.Table, stage: sa.Table, key: tuple[str, ...], version_column: str, repair: bool
) -> str:
    """The merge of ``stage`` into ``table``: :func:`_on_conflict` from a SELECT, as SQL."""
    names = tuple(c.name for c in stage.columns)
    # Columns the rows do not set take what INSERTED_AS makes of the row, or their
    # scalar defaults, inline (not as parameters).
    unset = [c for c in table.columns if c.name not in names]
    inserted = {c.name: c.info[INSERTED_AS](stage.c) for c in unset if INSERTED_AS in c.info}
    inserted.update(
        (c.name, sa.literal(getattr(c.default, "arg", None), c.type))
        for c in unset
        if c.name not in inserted and c.default is not None and c.default.is_scalar
    )
    insert = postgresql.insert(table).from_select(
        [*names, *inserted],
        sa.select(*stage.columns, *inserted.values()),
        include_defaults=False,
    )
    return render(_on_conflict(insert, table, names, key, version_column, repair))


@dataclass(frozen=True, eq=False)
class Archive:
    """Where rows go when a delete removes them, kept for the record.

    ``table`` has the columns of the table deleted from (same key) plus
    :data:`DELETED_VERSION`; ``overrides`` sets some of them otherwise than the row
    held them (a void invoice owes nothing, say). A key deleted again (the row came
    back in the source, then went again) replaces its archived row.
    """

    table: sa.Table
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def statement(
        self,
        dialect: str,
        source: sa.Table,
        where: sa.ColumnElement[bool],
        version: sa.ColumnElement[Any] | None = None,
    ) -> Any:
        """INSERT INTO the archive SELECT the rows of ``source`` that ``where`` picks.

        ``version``: the delete's version (default: the parameter :data:`DELETED_VERSION`).
        """
        names = [c.name for c in self.table.columns if c.name != DELETED_VERSION]
        picked = [
            sa.literal(self.overrides[n], self.table.c[n].type)
            if n in self.overrides
            else source.c[n]
            for n in names
        ]
        if version is None:
            version = sa.bindparam(DELETED_VERSION, type_=sa.BigInteger())
        insert = dialect_insert(dialect)(self.table).from_select(
            [*names, DELETED_VERSION], sa.select(*picked, version).where(where)
        )
        key = [c.name for c in self.table.primary_key.columns]
        return insert.on_conflict_do_update(
            index_elements=key,
            set_={n: insert.excluded[n] for n in [*names, DELETED_VERSION] if n not in key},
        )


def delete_versioned(
    connection: sa.Connection,
    table: sa.Table,
    keys: Sequence[tuple[tuple[Any, ...], int]],
    key: Sequence[str],
    *,
    version_column: str = "source_version",
    archive: Archive | None = None,
) -> list[tuple[Any, ...]]:
    """Delete rows by key where the stored version is not newer than the delete's.

    Returns the keys removed. With ``archive``, the rows deleted are copied there
    first (see :class:`Archive`). ``keys`` must not repeat a key. On PostgreSQL the
    keys and versions travel by binary COPY into a staging table, and one
    ``INSERT ... SELECT`` (the archive) and one ``DELETE ... USING`` do the rest
    (:mod:`consumers.target_stage`); elsewhere one statement (two with the archive)
    per key.
    """
    if not keys:
        return []
    names = tuple(key)
    if staged(connection):
        stage = stage_table(table, (*names, DELETED_VERSION), "gone")
        statements = _staged_delete(table, stage, names, version_column, archive)
        rows = [(*values, version) for values, version in keys]
        return copy_into_stage(connection, stage, rows, statements)
    removed = []
    for values, version in keys:
        condition = sa.and_(
            *(table.c[k] == v for k, v in zip(key, values, strict=True)),
            table.c[version_column] <= version,
        )
        if archive is not None:
            copy = archive.statement(connection.dialect.name, table, condition)
            connection.execute(copy, {DELETED_VERSION: version})
        if connection.execute(sa.delete(table).where(condition)).rowcount:
            removed.append(tuple(values))
    return removed


@functools.cache
def _staged_delete(
    table: sa.Table,
    stage: sa.Table,
    key: tuple[str, ...],
    version_column: str,
    archive: Archive | None,
) -> list[str]:
    """The archive copy (if any) and the delete of the rows ``stage`` names, as SQL."""
    version = stage.c[DELETED_VERSION]
    matched = sa.and_(*(table.c[k] == stage.c[k] for k in key), table.c[version_column] <= version)
    delete = sa.delete(table).where(matched).returning(*(table.c[k] for k in key))
    statements = [render(delete)]
    if archive is not None:
        statements.insert(0, render(archive.statement("postgresql", table, matched, version)))
    return statements
