"""From a batch's changes to target rows: the record checks every target shares.

A target checks and maps each change in Python before any SQL, so that a bad
record is refused alone with a :class:`~queuestream.errors.RecordError` naming its
table, key and column (and goes to the dead-letter topic within the error budget)
instead of failing the whole batch in the database. The checks here are the ones
both sample targets need: a value is present, text fits its column, a currency is
an ISO 4217 code, a decimal fits its NUMERIC exactly, a timestamp is aware.

:func:`validate` runs a target's mapping over one source table's changes and keeps
one change per key (:func:`latest_per_key`). Validation comes first, so that a
bad newest version does not hide a good older one in the same batch: the result
does not depend on where batches are cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import sqlalchemy as sa

from consumers.changes import Change
from consumers.target import ApplyReport
from queuestream.errors import RecordError
from queuestream.tables import TABLES_BY_NAME

__all__ = [
    "DecimalRule",
    "Row",
    "ValidRows",
    "check_currency",
    "check_decimal",
    "check_instant",
    "check_length",
    "check_required",
    "latest_per_key",
    "record_error",
    "text_limit",
    "validate",
]


def record_error(change: Change, column: str, reason: str) -> RecordError:
    """The error of ``change``'s ``column``: names its table, key and column."""
    return RecordError(reason, table=change.table, key=dict(change.key), column=column)


def check_required(change: Change, column: str, required_by: str) -> Any:
    """The value in ``column``, or a RecordError if it is NULL (``required_by``: the target)."""
    assert change.row is not None
    value = change.row.get(column)
    if value is None:
        raise record_error(change, column, f"NULL in a column the {required_by} target requires")
    return value


_CURRENCY = re.compile(r"[A-Za-z]{3}")


def check_currency(change: Change, column: str = "CurrencyCode") -> str:
    """The ISO 4217 code in ``column``, upper-cased, or a RecordError naming it."""
    assert change.row is not None
    value = change.row.get(column)
    if type(value) is str and len(value) == 3 and value.isascii() and value.isalpha():
        return value.upper()  # the usual case, checked at once
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        reason = f"{value!r} is not a three-letter ISO 4217 currency code"
        raise record_error(change, column, reason)
    return value.upper()


def text_limit(column: sa.Column[Any]) -> int:
    """The length of a target's VARCHAR column."""
    length = cast("sa.String", column.type).length
    assert length is not None, f"{column} has no length"
    return length


def check_length(change: Change, column: str, limit: int) -> str | None:
    """The text in ``column`` if it fits ``limit`` characters, else a RecordError naming it."""
    assert change.row is not None
    value = change.row.get(column)
    if value is None or (type(value) is str and len(value) <= limit):
        return value  # the usual case, checked at once
    if not isinstance(value, str):
        raise record_error(change, column, f"expected text, got {type(value).__name__}")
    if value is not None and len(value) > limit:
        reason = f"{len(value)} characters do not fit the target column of {limit}"
        raise record_error(change, column, reason)
    return value


@dataclass(frozen=True, slots=True)
class DecimalRule:
    """What fits a NUMERIC(p, s) column: below 10**(p-s), s places at most."""

    precision: int
    scale: int
    bound: Decimal  # the least absolute value that does not fit
    quantum: Decimal  # one unit of the last decimal place

    @classmethod
    def of(cls, column: sa.Column[Any]) -> DecimalRule:
        """The rule of a NUMERIC(p, s) column (a :class:`~consumers.target_sql.Money`)."""
        p = getattr(column.type, "precision", None)
        s = getattr(column.type, "scale", None)
        assert isinstance(p, int) and isinstance(s, int), f"{column} is not NUMERIC(p, s)"
        return cls(p, s, Decimal(10) ** (p - s), Decimal(1).scaleb(-s))


def check_decimal(
    change: Change, column: str, rule: DecimalRule, *, required_by: str | None = None
) -> Decimal | None:
    """The decimal in ``column`` if it fits ``rule`` exactly, else a RecordError naming it.

    An integer counts as a decimal. NULL gives None, or a RecordError when
    ``required_by`` names the target that requires a value.
    """
    assert change.row is not None
    value = change.row.get(column)
    if (
        type(value) is Decimal
        and value.is_finite()
        and -rule.bound < value < rule.bound
        and value == value.quantize(rule.quantum)
    ):
        return value  # the usual case, checked at once
    if value is None:
        if required_by is not None:
            check_required(change, column, required_by)
        return None
    if type(value) is int:
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise record_error(change, column, f"{value!r} is not a finite decimal")
    if abs(value) >= rule.bound:
        reason = f"{value} does not fit decimal({rule.precision},{rule.scale})"
        raise record_error(change, column, reason)
    if value != value.quantize(rule.quantum):
        raise record_error(change, column, f"{value} has more than {rule.scale} decimal places")
    return value


def check_instant(
    change: Change, column: str, *, required_by: str | None = None
) -> datetime | None:
    """The timezone-aware timestamp in ``column`` in UTC, else a RecordError naming it.

    NULL gives None, or a RecordError when ``required_by`` names the target that
    requires a value.
    """
    assert change.row is not None
    value = change.row.get(column)
    if type(value) is datetime and value.tzinfo is UTC:
        return value  # the usual case: already in UTC
    if value is None:
        if required_by is not None:
            check_required(change, column, required_by)
        return None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise record_error(change, column, f"{value!r} is not a timezone-aware timestamp")
    return value.astimezone(UTC)


def latest_per_key(changes: Sequence[Change], key: Sequence[str]) -> list[Change]:
    """One change per key: the highest version (the later offset on a tie).

    A statement may not touch a row twice (PostgreSQL refuses ON CONFLICT DO UPDATE
    on the same key twice), and only the newest version matters to the result.
    """
    best: dict[Any, Change] = {}
    get = best.get
    if len(key) == 1:  # the usual case: the key's value itself, no tuple per change
        (column,) = key
        for change in changes:
            k: Any = change.key[column]
            seen = get(k)
            if seen is None or change.version >= seen.version:
                best[k] = change
        return list(best.values())
    for change in changes:
        k = tuple([change.key[c] for c in key])
        seen = get(k)
        if seen is None or change.version >= seen.version:
            best[k] = change
    return list(best.values())


#: A target row: the values of a :class:`ValidRows`' ``columns``, in that order.
Row = tuple[Any, ...]


@dataclass
class ValidRows:
    """The changes of one source table that passed the checks, mapped to target rows."""

    table: str  # the source table (contract name)
    events: int  # changes in the batch, valid or not
    columns: tuple[str, ...]  # the target columns of each row, in order
    valid: list[Change] = field(default_factory=list)
    rows: dict[int, Row] = field(default_factory=dict)  # id(change) -> row
    winners: list[Change] = field(default_factory=list)  # one per key: latest_per_key
    applied: int = 0  # rows changed so far by these changes

    def row(self, change: Change) -> Row:
        """The target row ``change`` (an upsert among :attr:`valid`) maps to."""
        return self.rows[id(change)]

    def value(self, change: Change, column: str) -> Any:
        """The value of the target ``column`` in the row of ``change``."""
        return self.rows[id(change)][self.columns.index(column)]


def validate(
    table: str,
    batch: Sequence[Change],
    to_row: Callable[[Change], Row],
    report: ApplyReport,
    columns: Sequence[str],
) -> ValidRows:
    """Map the upserts of ``batch`` with ``to_row``; ``report.reject`` what it refuses.

    ``to_row`` gives the values of the target ``columns`` in order, or raises a
    RecordError for a record it cannot take. Deletes carry no row and are always
    valid.
    """
    found = ValidRows(table, len(batch), tuple(columns))
    rows, valid = found.rows, found.valid
    for change in batch:
        if change.op != "d":
            try:
                rows[id(change)] = to_row(change)
            except RecordError as error:
                report.reject(change, error)
                continue
        valid.append(change)
    found.winners = latest_per_key(valid, TABLES_BY_NAME[table].key)
    return found
