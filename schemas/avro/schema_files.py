"""The contract's .avsc files: which there are, each read once, the row record inside.

Every key and value schema of every topic is a file in this folder, named
``<table>.key.avsc`` or ``<table>.value.avsc`` (and ``batches.*`` for the batches
topic). Whatever needs a schema's JSON (the codec, the fast envelope encoder,
the producer's column policies) reads it through here, once.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, cast

from queuestream.errors import SchemaError

__all__ = ["SCHEMA_DIR", "load_schema", "row_record", "row_schema", "schema_names"]

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_names() -> list[str]:
    """Stems of every schema file, e.g. ``orders.value``."""
    return sorted(p.name.removesuffix(".avsc") for p in SCHEMA_DIR.glob("*.avsc"))


@cache
def load_schema(stem: str) -> dict[str, Any]:
    """The JSON of ``<stem>.avsc``, e.g. ``load_schema("orders.value")``."""
    path = SCHEMA_DIR / f"{stem}.avsc"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"no schema {path.name} in {SCHEMA_DIR}"
        raise SchemaError(msg) from None
    return schema


def row_schema(table: str) -> dict[str, Any]:
    """The row record (``Value``) inside ``table``'s envelope schema."""
    return row_record(load_schema(f"{table}.value"))


def row_record(envelope: dict[str, Any]) -> dict[str, Any]:
    """The row record inside an envelope schema's JSON (the record branch of ``before``)."""
    before = next(f for f in envelope["fields"] if f["name"] == "before")
    return cast("dict[str, Any]", next(b for b in before["type"] if isinstance(b, dict)))
