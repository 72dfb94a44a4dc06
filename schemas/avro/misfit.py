"""Which column of a record does not fit its schema, for an error message.

fastavro says that a record cannot be written, not which field is at fault (and
a change event nests the row inside an envelope). When an encoder fails, it asks
:func:`find_misfit`, which writes the fields one by one, descending into nested
records, and names the first that fails and why. Only the failure path pays.

A value the source holds but its column's type cannot read (SQLite keeps any type in
any column: text in an amount or a date) reaches the writers as an :class:`Unreadable`,
which every writer refuses and :func:`find_misfit` names with why: the row is then
refused as any row that cannot be encoded is, naming its table, key and column.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro

__all__ = ["WRITE_ERRORS", "Unreadable", "find_misfit", "not_a_number", "unreadable"]

#: What fastavro raises for a value that does not fit its schema.
WRITE_ERRORS = (ValueError, TypeError, UnicodeError, AttributeError, KeyError, OverflowError)


class Unreadable:
    """A value as the source holds it, in place of the one its column's type could not
    make of it. No writer takes it (it is none of the types they write), so the row fails
    to encode at this column, and :func:`find_misfit` says why, by what the field holds;
    a dead letter's JSON shows the value as stored (``str``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"Unreadable({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Unreadable)
            and type(self.value) is type(other.value)
            and self.value == other.value
        )

    def __hash__(self) -> int:
        return hash(self.value)


def _named_records(schema: Any, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every record schema inside ``schema``, by full name."""
    if isinstance(schema, list):
        for branch in schema:
            _named_records(branch, found)
    elif isinstance(schema, dict) and schema.get("type") == "record":
        namespace = schema.get("namespace", "")
        found[f"{namespace}.{schema['name']}" if namespace else schema["name"]] = schema
        for field in schema["fields"]:
            _named_records(field["type"], found)
    return found


def _kind(ftype: Any) -> str | None:
    """What a field of type ``ftype`` holds, in words ("a decimal"), for the types a source
    may hold text in (SQLite: any type in any column); None for the others."""
    for branch in ftype if isinstance(ftype, list) else [ftype]:
        if branch == "null":
            continue
        logical = branch.get("logicalType") if isinstance(branch, dict) else None
        base = branch.get("type") if isinstance(branch, dict) else branch
        if logical == "decimal":
            return "a decimal"
        if logical is not None and logical.startswith("timestamp"):
            return "a date and time"
        if logical is None and base in ("int", "long"):
            return "an integer"
    return None


def unreadable(value: Any, ftype: Any) -> str:
    """Why ``value`` (as the source holds it) cannot be written to a field of ``ftype``."""
    kind = _kind(ftype) or "what its column holds"
    return f"{value!r} is not {kind}: fix the value in the source"


def not_a_number(value: Any) -> str | None:
    """The reason a NaN or an infinity cannot be written (fastavro's own is Python internals)."""
    if isinstance(value, Decimal) and not value.is_finite():
        return f"{value} is not a number a decimal column can hold: fix the value in the source"
    return None


def find_misfit(schema_json: dict[str, Any], record: dict[str, Any]) -> tuple[str | None, str]:
    """Find which column of ``record`` cannot be written, for an error message.

    Envelope fields (``after``, ``source``...) are descended into, so the column
    named is the row's column.
    """
    named = _named_records(schema_json, {})

    def record_of(ftype: Any) -> dict[str, Any] | None:
        for branch in ftype if isinstance(ftype, list) else [ftype]:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return branch
            if isinstance(branch, str) and branch in named:
                return named[branch]
        return None

    def search(schema: dict[str, Any], value: dict[str, Any]) -> tuple[str | None, str]:
        for field in schema["fields"]:
            name = field["name"]
            item = value.get(name)
            nested = record_of(field["type"])
            if nested is not None:
                if isinstance(item, dict):
                    column, reason = search(nested, item)
                    if column is not None:
                        return column, reason
                    continue
                if item is None and isinstance(field["type"], list):
                    continue
            if isinstance(item, Unreadable):
                return name, unreadable(item.value, field["type"])
            nan = not_a_number(item)
            if nan is not None:
                return name, nan
            try:
                standalone = fastavro.parse_schema(field["type"], named_schemas={})
                fastavro.schemaless_writer(io.BytesIO(), standalone, item)
            except WRITE_ERRORS as exc:
                if item is None:
                    return name, "NULL in a column that is not nullable"
                if _kind(field["type"]) is not None and isinstance(item, str | bytes):
                    return name, unreadable(item, field["type"])  # text where a number was
                return name, f"{exc} (value {item!r})"
        return None, "the record does not match its schema"

    return search(schema_json, record)
