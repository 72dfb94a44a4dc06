"""The generated readers in C: one :class:`~schemas.avro._creader.Program` per schema.

A generated Python reader (:mod:`.fast_reader`) still pays the interpreter for every
field of every message: a consumer spent 8-13 µs decoding one change event, 85% of
its intake (py-spy over ``make bench-freshness``), and at a refresh a second that
decoding is what stands between the producer's commit and the apply. The extension
``schemas/avro/_creader.c`` walks the same schema in C: :func:`plan` writes the walk
as nested tuples (what each value is, which fields of a record are kept), the
extension builds it once, and ``Program.read(data, p)`` returns what the Python
reader returns: the same dicts and values, with timestamps and decimals from the
same :class:`~._read_parts.ValueCache`.

The C reader handles the well-formed case only. Anything else (the message ends
early, a negative length, an index out of range, text that is not UTF-8) is read
again by the Python reader, which raises its own errors. tests/unit/test_fast_reader.py
checks both readers against fastavro, byte for byte, on random records of every
schema.

The extension is optional: where it was not built (no C compiler at install time),
:func:`compiled` returns None and the Python reader is used; ``QUEUESTREAM_AVRO_C=0``
turns it off too (to compare the two).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from schemas.avro._read_parts import ValueCache

if TYPE_CHECKING:  # fast_reader imports this module
    from schemas.avro.fast_reader import Projection

__all__ = ["AVAILABLE", "ENABLED", "compiled", "extension", "plan"]


def extension(name: str) -> ModuleType | None:
    """The C extension ``schemas.avro.<name>``, or None where it was not built (no C
    compiler at install: the Python readers and writers serve)."""
    try:
        return importlib.import_module(f"schemas.avro.{name}")
    except ImportError:
        return None


_creader = extension("_creader")

#: Whether the compiled Avro code (readers and writers) may be used: not turned off.
ENABLED = os.environ.get("QUEUESTREAM_AVRO_C", "1") != "0"
#: Whether the compiled readers are built and not turned off.
AVAILABLE = _creader is not None and ENABLED

#: A schema part resolved: (kind, schema), as :meth:`fast_reader._Writer.resolve` gives it.
Resolve = Callable[[Any], tuple[str, Any]]

_PLAIN = frozenset({"null", "boolean", "float", "double", "string", "bytes"})


def plan(
    schema: Any, fields: Projection | None, resolve: Resolve, cache: ValueCache
) -> tuple[Any, ...]:
    """The walk of ``schema`` as the extension takes it, keeping ``fields`` of a record.

    Called only for a schema the Python reader was generated for (so every kind is one
    :func:`resolve` knows, and no record is recursive).
    """
    kind, schema = resolve(schema)
    if kind in _PLAIN:
        return (kind,)
    if kind in {"int", "long"}:
        return ("long",)
    if kind == "fixed":
        return ("fixed", int(schema["size"]))
    if kind == "long-timestamp-micros":
        return ("timestamp", cache.instant_values, cache.instant)
    if kind == "bytes-decimal":
        digits = (int(schema["precision"]), int(schema.get("scale", 0)))
        _, make = cache.decimals(*digits)
        return ("decimal", cache.decimal_values[digits], make)  # the dict decimals() fills
    if kind == "enum":
        return ("enum", tuple(schema["symbols"]))
    if kind == "map":
        return ("map", plan(schema["values"], None, resolve, cache))
    if kind == "union":
        return (
            "union",
            tuple(
                plan(b, fields if resolve(b)[0] == "record" else None, resolve, cache)
                for b in schema
            ),
        )
    kept = None if fields is None else fields.fields
    return (
        "record",
        tuple(
            (
                f["name"] if kept is None or f["name"] in kept else None,
                plan(f["type"], None if kept is None else kept.get(f["name"]), resolve, cache),
            )
            for f in schema["fields"]
        ),
    )


def compiled(
    schema: Any,
    fields: Projection | None,
    resolve: Resolve,
    cache: ValueCache,
    fallback: Callable[[bytes, int], Any],
) -> Callable[[bytes, int], Any] | None:
    """``Program(plan(...), fallback).read``, or None without the extension."""
    if not AVAILABLE or _creader is None:
        return None
    program = _creader.Program(plan(schema, fields, resolve, cache), fallback)
    read: Callable[[bytes, int], Any] = program.read
    return read
