"""Which column of a record does not fit its schema, for an error message.

fastavro says that a record cannot be written, not which field is at fault (and
a change event nests the row inside an envelope). When an encoder fails, it asks
:func:`find_misfit`, which writes the fields one by one, descending into nested
records, and names the first that fails and why. Only the failure path pays.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro

__all__ = ["WRITE_ERRORS", "find_misfit", "not_a_number"]

#: What fastavro raises for a value that does not fit its schema.
WRITE_ERRORS = (ValueError, TypeError, UnicodeError, AttributeError, KeyError, OverflowError)


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
            nan = not_a_number(item)
            if nan is not None:
                return name, nan
            try:
                standalone = fastavro.parse_schema(field["type"], named_schemas={})
                fastavro.schemaless_writer(io.BytesIO(), standalone, item)
            except WRITE_ERRORS as exc:
                if item is None:
                    return name, "NULL in a column that is not nullable"
                return name, f"{exc} (value {item!r})"
        return None, "the record does not match its schema"

    return search(schema_json, record)
