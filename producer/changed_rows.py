"""A changed row as the producer reads it: its values by position, no dict made of it.

A snapshot (:mod:`producer.source_reader`) reads each table's columns in the sync
table's order followed by the row's CustomerID; :class:`RowLayout` says where the
columns the producer looks at stand, and every reader of a row (the overlap filter,
the event's preparation, the sweep) reads them there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queuestream.sync_schema import Base
from queuestream.tables import TableSpec

__all__ = ["ChangedRow", "RowLayout", "check_columns", "row_layout"]


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where a table's columns stand in a :class:`ChangedRow`'s values: the sync table's
    column order (:func:`row_layout`)."""

    columns: tuple[str, ...]
    modified: int  # ModifiedDate
    created: int  # CreatedDate
    key: tuple[int, ...]  # the key columns, in the key's order

    def key_of(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """A row's key: its ``values`` at :attr:`key`, as a tuple. Made without a generator:
        once for each row of the overlap the filter tests (at a refresh a second, every
        row of a window), where ``tuple(values[i] for i in key)`` was 2.5% of the row
        reader's CPU."""
        key = self.key
        if len(key) == 1:
            return (values[key[0]],)
        if len(key) == 2:  # OrderDetails (OrderID, OrderLine)
            return (values[key[0]], values[key[1]])
        return tuple([values[i] for i in key])


@functools.cache
def row_layout(spec: TableSpec) -> RowLayout:
    """The layout of ``spec``'s rows as a snapshot reads them (the sync table's columns)."""
    columns = tuple(c.name for c in Base.metadata.tables[spec.source].columns)
    return RowLayout(
        columns,
        columns.index("ModifiedDate"),
        columns.index("CreatedDate"),
        tuple(columns.index(k) for k in spec.key),
    )


@dataclass(slots=True)
class ChangedRow:
    """A row as read: its values in the table's column order (``layout``; more may follow
    them, which nothing reads) and its CustomerID. A row is read and published without
    a dict made of it; :attr:`row` makes one. An amount read from PostgreSQL is the text
    it was sent as (:mod:`producer.postgres_rows`), which the row writers take."""

    values: Sequence[Any]
    customer_id: int
    layout: RowLayout

    @property
    def row(self) -> dict[str, Any]:
        """The row as a dict of column to value (a new one each time)."""
        return dict(zip(self.layout.columns, self.values, strict=False))

    @classmethod
    def of(cls, spec: TableSpec, row: Mapping[str, Any], customer_id: int) -> ChangedRow:
        """The changed row of a dict holding every column of ``spec``'s table."""
        layout = row_layout(spec)
        return cls(tuple(row[c] for c in layout.columns), customer_id, layout)


def check_columns(names: list[str], layout: RowLayout) -> None:
    """A query's columns are the layout's, then CustomerID (as a snapshot selects them)."""
    assert tuple(names[:-1]) == layout.columns, f"{names} read, {layout.columns} expected"
