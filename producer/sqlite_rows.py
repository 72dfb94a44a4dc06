"""SQLite rows read through the sqlite3 driver's own cursor, inside a snapshot.

SQLAlchemy makes each row it reads a Row and runs its columns' result processors
on it (text to datetime, a stored number to Decimal); the row reader then makes a
:class:`ChangedRow` of it. Here SQLAlchemy still runs the query (its parameters
bound as it binds them), but the rows are taken from the driver's cursor and made
ChangedRows a chunk at a time by one function generated for the query, which runs
the same processors, SQLAlchemy's own: the values are the ones SQLAlchemy reads (a
test compares both, value and type, on every table).

Text is decoded by sqlite3 itself (``text_factory`` str, set around each fetch), not
by the connection's own factory, a Python function per value that lets text that is
not UTF-8 through as lone surrogates (:mod:`queuestream.databases`). A query whose
text sqlite3 cannot decode is read again from its start with that factory, its rows
already given skipped, so that such a row still reaches the codec, which names it.

Reading the 200,000 rows of `make bench` (CPU a row, reading alone): 6.1 µs through
SQLAlchemy, 5.2 from the driver's cursor with sqlite3 decoding the text, 4.1 with the
amounts kept (:func:`_kept`).

sqlite3's errors are raised as SQLAlchemy's, so a locked database is still waited out
(:func:`queuestream.databases.retriable_outages`).

SQLite keeps any type in any column: text in an amount or a date, which SQLAlchemy's
processors refuse with a TypeError or ValueError that names nothing. A chunk whose
conversion fails is converted again a row and a value at a time (:func:`_careful`),
each value a processor refuses given as :class:`~schemas.avro.misfit.Unreadable`: the
row reaches :class:`~producer.events.RowPreparer`, which refuses it as it refuses any
row that cannot be encoded, naming table, key and column (a dead letter within
``--max-errors``, else the row ``produce`` waits on). Only such a chunk pays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.cursor import CursorFetchStrategy

from producer.changed_rows import ChangedRow, RowLayout, check_columns
from queuestream.databases import driver_errors
from schemas.avro.misfit import Unreadable

__all__ = ["read"]

#: Makes the ChangedRows of a chunk of the driver's rows.
Converter = Callable[[Sequence[tuple[Any, ...]]], list[ChangedRow]]
#: Execution options under which SQLAlchemy reads no row ahead of the driver's cursor.
_UNBUFFERED = {"stream_results": False, "yield_per": None}
#: What sqlite3 says of text it cannot decode as UTF-8 with ``text_factory`` str.
_NOT_UTF8 = "Could not decode to UTF-8"


def read(
    conn: sa.Connection, query: sa.Select[Any], layout: RowLayout, fetch: int
) -> Iterator[ChangedRow]:
    """The rows of ``query`` (a snapshot's select: the layout's columns, then CustomerID),
    ``fetch`` at a time."""
    processors = _processors(conn.dialect, query)
    convert = _guarded(_converter(processors, layout), _careful(processors, layout))
    given = 0
    try:
        for chunk in _chunks(conn, query, layout, fetch, strict=True):
            given += len(chunk)
            yield from convert(chunk)
    except sa.exc.OperationalError as exc:
        if _NOT_UTF8 not in str(exc.orig):
            raise
        skip = given
        for chunk in _chunks(conn, query, layout, fetch, strict=False):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield from convert(chunk[skip:])
            skip = 0


def _chunks(
    conn: sa.Connection, query: sa.Select[Any], layout: RowLayout, fetch: int, *, strict: bool
) -> Iterator[Sequence[tuple[Any, ...]]]:
    """The driver's rows of ``query``, ``fetch`` at a time; ``strict``: text decoded by
    sqlite3 itself (an error for text that is not UTF-8)."""
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    lenient = driver.text_factory
    # No rows read ahead into SQLAlchemy's buffer, whatever the connection was told before
    # (Connection.execution_options sets yield_per on the connection itself).
    result = conn.execute(query, execution_options=_UNBUFFERED)
    try:
        if type(result.cursor_strategy) is not CursorFetchStrategy:
            msg = f"SQLAlchemy read ahead of the cursor ({type(result.cursor_strategy)})"
            raise AssertionError(msg)
        check_columns(list(result.keys()), layout)
        cursor = result.cursor
        with driver_errors(conn, "fetch"):
            while True:
                if strict:
                    driver.text_factory = str
                try:
                    chunk = cursor.fetchmany(fetch)
                finally:
                    driver.text_factory = lenient
                if not chunk:
                    return
                yield chunk
    finally:
        result.close()


#: A column's result processor (None: nothing), and whether what it makes repeats (an
#: amount) and may be kept by the value it was made of.
Processor = tuple[Callable[[Any], Any] | None, bool]
#: What SQLAlchemy's processors raise for a value of another type (text in an amount: a
#: TypeError; text that is no date: a ValueError).
_REFUSED = (TypeError, ValueError, ArithmeticError)
#: Amounts kept per column, at most (then forgotten all at once).
_AMOUNTS_KEPT = 4096


def _processors(dialect: sa.Dialect, query: sa.Select[Any]) -> list[Processor]:
    """What SQLAlchemy runs on each column's value as it reads it."""
    found: list[Processor] = []
    for column in query.selected_columns:
        kind = column.type.dialect_impl(dialect)
        amount = isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float)
        found.append((kind.result_processor(dialect, None), amount))
    return found


def _kept(processor: Callable[[Any], Any]) -> tuple[dict[Any, Any], Callable[[Any], Any]]:
    """A dict of the values ``processor`` made, and ``processor`` filling it.

    SQLAlchemy makes a Decimal of a stored amount by formatting it (0.4 µs); amounts
    repeat, so what it made is kept by the stored value. Values that are equal make
    the same Decimal (3 and 3.0 both make 3.00), but for 0.0 and -0.0 (0.00, -0.00):
    a zero Decimal is falsy, so ``kept.get(v) or make(v)`` makes every zero again, and
    zeros are not kept.
    """
    kept: dict[Any, Any] = {}

    def make(value: Any) -> Any:
        made = processor(value)
        if made:
            if len(kept) >= _AMOUNTS_KEPT:
                kept.clear()
            kept[value] = made
        return made

    return kept, make


def _converter(processors: list[Processor], layout: RowLayout) -> Converter:
    """``convert(chunk)``: one ChangedRow per row, each value through its processor, the
    CustomerID (last) 0 where it is NULL (an order line whose order is gone). For
    processors of column 1 (a timestamp) and 2 (an amount) of four, it reads::

        def convert(chunk):
            return [ChangedRow((r[0], p1(r[1]), k2.get(r[2]) or p2(r[2]), r[3]),
                               0 if r[3] is None else int(r[3]), layout) for r in chunk]
    """
    names: dict[str, Any] = {"ChangedRow": ChangedRow, "layout": layout}
    values = []
    for number, (processor, amount) in enumerate(processors):
        if processor is None:
            values.append(f"r[{number}]")
        elif amount:
            names[f"k{number}"], names[f"p{number}"] = _kept(processor)
            values.append(f"(k{number}.get(r[{number}]) or p{number}(r[{number}]))")
        else:
            names[f"p{number}"] = processor
            values.append(f"p{number}(r[{number}])")
    last = len(processors) - 1
    source = (
        "def convert(chunk):\n"
        f"    return [ChangedRow(({', '.join(values)},), "
        f"0 if r[{last}] is None else int({values[last]}), layout) for r in chunk]\n"
    )
    exec(compile(source, "<sqlite rows>", "exec"), names)
    converter: Converter = names["convert"]
    return converter


def _guarded(convert: Converter, careful: Converter) -> Converter:
    """``convert``, or ``careful`` for a chunk it fails on (a value of another type than
    its column's): the fast path stays one comprehension a chunk, with no check a value."""

    def guarded(chunk: Sequence[tuple[Any, ...]]) -> list[ChangedRow]:
        try:
            return convert(chunk)
        except _REFUSED:
            return careful(chunk)

    return guarded


def _careful(processors: list[Processor], layout: RowLayout) -> Converter:
    """What :func:`_converter` makes of a chunk, a value at a time: a value its processor
    refuses is given as :class:`~schemas.avro.misfit.Unreadable` (the row is refused when
    it is encoded, naming the column), and a CustomerID that is not a number as 0, as a
    NULL one (the row's own CustomerID column, where it has one, is refused when
    encoded; an order line takes its order's and is published on CustomerID 0's
    partition, as a line whose order is gone). Every other value is the one
    :func:`_converter` makes."""

    def value(processor: Callable[[Any], Any] | None, stored: Any) -> Any:
        if processor is None:
            return stored
        try:
            return processor(stored)
        except _REFUSED:
            return Unreadable(stored)

    def customer(stored: Any) -> int:
        if stored is None:
            return 0
        try:
            return int(stored)
        except _REFUSED:
            return 0

    columns = [processor for processor, _amount in processors]

    def careful(chunk: Sequence[tuple[Any, ...]]) -> list[ChangedRow]:
        made = []
        for r in chunk:
            values = tuple(value(p, v) for p, v in zip(columns, r, strict=True))
            made.append(ChangedRow(values, customer(values[-1]), layout))
        return made

    return careful
