"""Every released schema, kept by fingerprint, so that any consumer can read any event.

A single-object message names its writer's schema only by the CRC-64-AVRO
fingerprint of its Parsing Canonical Form (the 8 bytes after ``C3 01``). A consumer
that is to read events written with an earlier (or later) contract than its own
needs that writer schema, so every schema that ever shipped stays here:
``history/<stem>/<fingerprint>.avsc``, the fingerprint in hex as the bytes stand
in the message (an unknown fingerprint's error names the file to look for).
Entries are never changed or removed; a contract change adds one.

:mod:`.record_history` (``make schema-history``) adds the current .avsc files,
refusing one that an earlier version cannot read or that cannot read them
(:func:`incompatibility`). tests/unit/test_schema_history.py fails when a current
.avsc has no entry, so a contract change cannot ship without one.

:func:`writer_schemas` is what the codec looks fingerprints up in: the history
here, plus folders of the same layout that a user adds (``schema_history_dir``,
to read a newer producer's events before upgrading).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.utils import generate_many

from queuestream.errors import SchemaError
from schemas.avro.schema_files import SCHEMA_DIR

__all__ = [
    "HISTORY_DIR",
    "fingerprint_of",
    "history",
    "incompatibility",
    "writer_schemas",
]

log = logging.getLogger(__name__)

HISTORY_DIR = SCHEMA_DIR / "history"
#: Records generated per schema to check that one schema reads another's.
SAMPLES = 200


def fingerprint_of(schema: Any) -> str:
    """The CRC-64-AVRO fingerprint of ``schema``'s canonical form, in hex as on the wire."""
    return str(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def history(history_dir: Path = HISTORY_DIR) -> dict[str, dict[str, dict[str, Any]]]:
    """Every entry of ``history_dir``: stem -> fingerprint -> schema JSON.

    The fingerprint is computed from the file, not taken from its name: a file whose
    name says otherwise is a mistake, refused with a SchemaError naming it.
    """
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(history_dir.glob("*/*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            msg = f"schema history file {path} cannot be read: {exc}"
            raise SchemaError(msg) from exc
        computed = fingerprint_of(schema)
        if computed != path.stem:
            msg = (
                f"schema history file {path} holds a schema of fingerprint {computed}: "
                f"rename it {computed}.avsc"
            )
            raise SchemaError(msg)
        found.setdefault(path.parent.name, {})[computed] = schema
    return found


def writer_schemas(extra: Iterable[Path] = ()) -> dict[bytes, tuple[str, dict[str, Any]]]:
    """Fingerprint (8 bytes) -> (stem, schema) of this history and of the ``extra`` folders."""
    known: dict[bytes, tuple[str, dict[str, Any]]] = {}
    for folder in (HISTORY_DIR, *extra):
        if not folder.is_dir():
            msg = (
                f"schema history folder {folder} does not exist: give a folder of "
                "<stem>/<fingerprint>.avsc files (a release's schemas/avro/history)"
            )
            raise SchemaError(msg)
        for stem, entries in history(folder).items():
            for hexed, schema in entries.items():
                known.setdefault(bytes.fromhex(hexed), (stem, schema))
    return known


def incompatibility(reader: Any, writer: Any, samples: int = SAMPLES) -> str | None:
    """Why ``reader`` cannot read what ``writer`` writes, or None when it can.

    Decided as a consumer decides: ``samples`` records generated for the writer
    schema are written with it and read with the reader schema by Avro schema
    resolution (fastavro's), the way :class:`.codec.AvroCodec` reads them.
    """
    parsed_reader = fastavro.parse_schema(reader, named_schemas={})
    parsed_writer = fastavro.parse_schema(writer, named_schemas={})
    buffer = io.BytesIO()
    for record in generate_many(parsed_writer, samples):
        buffer.seek(0)
        buffer.truncate()
        fastavro.schemaless_writer(buffer, parsed_writer, record)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, parsed_writer, parsed_reader)
        except Exception as exc:  # any failure to resolve is the answer
            return f"{type(exc).__name__}: {exc}"
    return None
