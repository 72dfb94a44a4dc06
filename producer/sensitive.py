"""Sensitive columns are excluded, masked or hashed before they leave the source (promise 8).

* ``exclude``: the column is published as null (its schema field must be nullable).
* ``mask``: every character but the last four becomes ``*`` (``************1111``).
* ``hash``: HMAC-SHA256 with ``hash_key`` (hex digest); plain SHA-256 without a key,
  which a dictionary attack can reverse for short values, so a key is advised.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from queuestream.errors import ConfigurationError
from queuestream.settings import DEFAULT_SENSITIVE_COLUMNS
from queuestream.tables import TABLES_BY_NAME
from schemas.avro import row_schema

if TYPE_CHECKING:
    from queuestream.settings import Settings

__all__ = ["ColumnPolicy", "column_policy", "mask"]

log = logging.getLogger(__name__)

Transform = Callable[[Any], Any]


def mask(value: str, keep: int = 4) -> str:
    if len(value) <= keep:
        return "*" * len(value)
    return "*" * (len(value) - keep) + value[-keep:]


def _row_fields(table: str) -> dict[str, Any]:
    return {f["name"]: f["type"] for f in row_schema(table)["fields"]}


class ColumnPolicy:
    """Applies the configured per-table column actions to row dicts in place."""

    def __init__(
        self, rules: Mapping[str, Mapping[str, str]], hash_key: bytes | None = None
    ) -> None:
        self._by_table: dict[str, list[tuple[str, Transform]]] = {}
        if any("hash" in cols.values() for cols in rules.values()) and not hash_key:
            log.warning("hashing sensitive columns without hash_key: set QUEUESTREAM_HASH_KEY")
        for table, columns in rules.items():
            if table not in TABLES_BY_NAME:
                msg = (
                    f"sensitive_columns names unknown table {table!r}; "
                    f"known: {', '.join(TABLES_BY_NAME)}"
                )
                raise ConfigurationError(msg)
            fields = _row_fields(table)
            actions: list[tuple[str, Transform]] = []
            for column, action in columns.items():
                actions.append((column, self._transform(table, column, action, fields, hash_key)))
            self._by_table[table] = actions

    @staticmethod
    def _transform(
        table: str, column: str, action: str, fields: dict[str, Any], hash_key: bytes | None
    ) -> Transform:
        if column not in fields:
            msg = f"sensitive_columns: table {table} has no column {column!r}"
            raise ConfigurationError(msg)
        ftype = fields[column]
        nullable = isinstance(ftype, list) and "null" in ftype
        is_string = ftype == "string" or (isinstance(ftype, list) and "string" in ftype)
        if table in TABLES_BY_NAME and column in TABLES_BY_NAME[table].key:
            msg = f"sensitive_columns: {table}.{column} is part of the key and cannot be changed"
            raise ConfigurationError(msg)
        if action == "exclude":
            if not nullable:
                msg = (
                    f"sensitive_columns: {table}.{column} is not nullable in the schema, "
                    "so it cannot be excluded; use mask or hash"
                )
                raise ConfigurationError(msg)
            return lambda _value: None
        if not is_string:
            msg = (
                f"sensitive_columns: {table}.{column} is not text, so it cannot be "
                f"{action}ed; use exclude"
            )
            raise ConfigurationError(msg)
        if action == "mask":
            return lambda value: None if value is None else mask(str(value))
        if action == "hash":
            if hash_key:
                return lambda value: (
                    None
                    if value is None
                    else hmac.new(hash_key, str(value).encode(), hashlib.sha256).hexdigest()
                )
            return lambda value: (
                None if value is None else hashlib.sha256(str(value).encode()).hexdigest()
            )
        msg = (
            f"sensitive_columns: {table}.{column}: unknown action {action!r} (exclude, mask, hash)"
        )
        raise ConfigurationError(msg)

    def for_table(self, table: str) -> Callable[[dict[str, Any]], None] | None:
        """A function applying ``table``'s rules to a row in place, or None when it has none."""
        actions = self._by_table.get(table)
        if not actions:
            return None

        def apply(row: dict[str, Any]) -> None:
            for column, transform in actions:
                row[column] = transform(row.get(column))

        return apply

    def for_values(
        self, table: str, columns: Sequence[str]
    ) -> Callable[[Sequence[Any]], list[Any]] | None:
        """As :meth:`for_table`, for a row given as its values in the order of ``columns``:
        a function returning a copy of the values with the rules applied."""
        actions = [(columns.index(c), t) for c, t in self._by_table.get(table, ())]
        if not actions:
            return None

        def apply(values: Sequence[Any]) -> list[Any]:
            applied = list(values)
            for position, transform in actions:
                applied[position] = transform(applied[position])
            return applied

        return apply


def column_policy(settings: Settings) -> ColumnPolicy:
    """The policy ``sensitive_columns`` and ``hash_key`` configure.

    A ``sensitive_columns`` setting replaces the default whole: one that names other
    tables only (``[sensitive_columns.customers]``) publishes the account numbers the
    default masks as the source holds them. That is logged as a warning, naming them.
    """
    rules = settings.sensitive_columns
    exposed = [
        f"{table}.{column}"
        for table, columns in DEFAULT_SENSITIVE_COLUMNS.items()
        for column in columns
        if column not in rules.get(table, {})
    ]
    if exposed:
        log.warning(
            "sensitive_columns replaces the default, and leaves out %s: they are published "
            "as the source holds them; list them (mask, hash or exclude) to keep them hidden",
            ", ".join(exposed),
        )
    key = settings.hash_key.get_secret_value().encode() if settings.hash_key else None
    return ColumnPolicy(rules, key)
