"""Avro readers generated per schema: Python source written from the .avsc, compiled once.

fastavro's ``schemaless_reader`` interprets the schema again for every message: per
field it looks the type up, dispatches on it and reads through a file object. A
change event carries some sixty values (the row, the ``source`` block, the
transaction), so walking the schema costs more than reading the data.
:func:`compile_reader` writes that walk out once, as the source of one
straight-line Python function, and compiles it: the function reads the message
``bytes`` at a position index, decodes varints inline (one byte in the common case),
strings as slices decoded from UTF-8, unions by testing the branch byte, and inlines
named records where they are used.

It returns exactly what ``fastavro.schemaless_reader`` returns for the same bytes
with the same schema: the same keys in the same order, equal values of the same
types (timestamp-micros an aware UTC datetime, decimal a Decimal at the schema's
scale, rounded to its precision as fastavro does). tests/unit/test_fast_reader.py
checks that on random records of every schema in this folder. Like fastavro it
ignores bytes after the record. Malformed input raises: ``EOFError`` when the
message ends inside the record, ``ValueError`` for a negative length, a union branch
or an enum index out of range (fastavro takes a negative index from the end of
the list; nothing writes one), ``UnicodeDecodeError`` for a string that is not UTF-8.

A :class:`Projection` asks for some fields only; the others are skipped: their
lengths are read, their values never built (a skipped string is not checked to be
UTF-8, the one thing a projection does not notice), and a run of skipped fields
whose bytes are the ones that run skipped last time (the constant parts of a
refresh's envelopes) is passed over with one comparison. :func:`project` cuts a
decoded record down the same way, for callers that decode with fastavro. The
datetimes and decimals a reader makes come from a :class:`ValueCache` it shares
with the other readers of one codec.

Handled: null, boolean, int, long, float, double, bytes, string, record, enum, map,
fixed, unions of them, and the logical types timestamp-micros (on long) and decimal
(on bytes); other logical types stay raw values, as in fastavro. For a schema with
anything else (an array, a recursive record, a logical type fastavro converts that
is not one of those two) :func:`compile_reader` returns None: decode with fastavro.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro.read import LOGICAL_READERS

from queuestream.errors import SchemaError
from schemas.avro import _read_parts as parts
from schemas.avro._read_parts import ValueCache
from schemas.avro.compiled_reader import compiled

__all__ = ["Projection", "Reader", "ValueCache", "compile_reader", "project"]

log = logging.getLogger(__name__)

#: A generated reader: ``reader(data, position)`` is the record that starts at ``position``.
Reader = Callable[[bytes, int], Any]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
#: The logical types generated here; any other that fastavro converts means "use fastavro".
_LOGICAL = frozenset({"long-timestamp-micros", "bytes-decimal"})
_FIXED_WIDTH = {"float": 4, "double": 8}


class Projection:
    """The fields of a record a reader returns: whole (positional) or in part (keyword).

    ``Projection("op", "after", source=Projection("ts_ms"))`` keeps ``op`` and
    ``after`` whole and only ``ts_ms`` of the ``source`` record; other fields are
    skipped. A part applies to the record branch of a union (``["null", Row]``).
    Instances are compared by identity: make each once, at import.
    """

    __slots__ = ("fields",)

    def __init__(self, *whole: str, **parts: Projection) -> None:
        self.fields: dict[str, Projection | None] = {**dict.fromkeys(whole), **parts}

    def __repr__(self) -> str:
        inner = ", ".join(k if v is None else f"{k}={v!r}" for k, v in self.fields.items())
        return f"Projection({inner})"


def project(value: Any, fields: Projection | None) -> Any:
    """``value`` (a record, or None) cut down to ``fields``, as a projected reader reads it."""
    if fields is None or not isinstance(value, dict):
        return value
    return {
        name: project(item, fields.fields[name])
        for name, item in value.items()
        if name in fields.fields
    }


def compile_reader(
    schema: Any,
    fields: Projection | None = None,
    cache: ValueCache | None = None,
    *,
    python: bool = False,
) -> Reader | None:
    """A generated reader of ``schema`` (the .avsc JSON), or None where it falls to fastavro.

    ``fields`` keeps only some fields of the top record (see :class:`Projection`); one
    that names a field the schema lacks, or asks for fields of what is not a record,
    raises SchemaError. Readers given the same ``cache`` share the datetimes and
    decimals they make (see :class:`._read_ValueCache`); without one, a new one.
    Where the C extension is built (:mod:`.compiled_reader`) the reader is its compiled
    form, which hands what it cannot read to the Python one; ``python``: the Python
    reader in any case.
    """
    named: dict[str, Any] = {}
    parsed = fastavro.parse_schema(schema, named_schemas=named)
    name = parsed.get("name", "") if isinstance(parsed, dict) else str(parsed)
    writer = _Writer(named, ValueCache() if cache is None else cache)
    try:
        writer.read(parsed, 2, "value", fields)
    except _Unsupported as why:
        log.debug("no generated reader for %s: %s", name, why)
        return None
    lines = [
        "def read(data, p):",
        "    end = len(data)",
        "    try:",
        *writer.lines,
        "    except (IndexError, _StructError):",
        "        raise _truncated(p, end) from None",
        "    if p > end:",
        "        raise _truncated(p, end)",
        "    return value",
    ]
    namespace = dict(writer.consts)
    exec(compile("\n".join(lines), f"<avro reader {name}>", "exec"), namespace)
    reader: Reader = namespace["read"]
    if not python:
        fast = compiled(parsed, fields, writer.resolve, writer.cache, reader)
        if fast is not None:
            return fast
    return reader


class _Unsupported(Exception):
    """A schema (part) the generator leaves to fastavro."""


#: What the generated code calls, by the names it uses.
_HELPERS: dict[str, Any] = {
    "_ONE_BYTE": parts.ONE_BYTE,
    "_SPAN": parts.SPAN,
    "_long": parts.long,
    "_span": parts.span,
    "_branch": parts.branch,
    "_bad_enum": parts.bad_enum,
    "_truncated": parts.truncated,
    "_StructError": struct.error,
}


class _Writer:
    """Writes the source of one reader: lines at a depth, constants by name, fresh variables."""

    def __init__(self, named: dict[str, Any], cache: ValueCache) -> None:
        self.named = named
        self.cache = cache
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {
            **_HELPERS,
            "_instants": cache.instant_values.get,
            "_instant": cache.instant,
        }
        self.count = 0
        self.inlining: list[str] = []  # the named records being written out, to refuse recursion

    def var(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, value: Any, stem: str) -> str:
        name = f"_{stem}{len(self.consts)}"
        self.consts[name] = value
        return name

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def resolve(self, schema: Any) -> tuple[str, Any]:
        """(kind, schema): named references followed, ``{"type": "long"}`` made plain."""
        while True:
            if isinstance(schema, list):
                return "union", schema
            if isinstance(schema, str):
                if schema in _PRIMITIVES:
                    return schema, schema
                if schema not in self.named:
                    msg = f"unknown name {schema}"
                    raise _Unsupported(msg)
                schema = self.named[schema]
                continue
            kind = schema["type"]
            logical = schema.get("logicalType")
            if logical is not None and isinstance(kind, str):
                key = f"{kind}-{logical}"
                if key in _LOGICAL:
                    return key, schema
                if key in LOGICAL_READERS:
                    msg = f"logical type {key}"
                    raise _Unsupported(msg)
            if kind in _PRIMITIVES or kind in {"record", "enum", "map", "fixed"}:
                return kind, schema
            if kind in {"array", "error", "error_union", "request"}:
                msg = f"type {kind}"
                raise _Unsupported(msg)
            schema = kind  # {"type": <a name, a union or a schema>}

    # -- reading ------------------------------------------------------------------
    def long(self, depth: int, var: str) -> None:
        """``var`` = the long at p; p after it."""
        self.line(depth, f"{var} = _ONE_BYTE[data[p]]")
        self.line(depth, f"if {var} is None:")
        self.line(depth + 1, f"{var}, p = _long(data, p)")
        self.line(depth, "else:")
        self.line(depth + 1, "p += 1")

    def span(self, depth: int, var: str) -> str:
        """``var`` = 1 + the length at p, p at the length's last byte; the payload's slice."""
        self.line(depth, f"{var} = _SPAN[data[p]]")
        self.line(depth, f"if {var} is None:")
        self.line(depth + 1, f"{var}, p = _span(data, p)")
        return f"data[p + 1:p + {var}]"

    def read(self, schema: Any, depth: int, target: str, fields: Projection | None) -> None:
        """Code that sets ``target`` to the value of ``schema`` at p and moves p past it."""
        kind, schema = self.resolve(schema)
        if fields is not None and kind not in {"record", "union"}:
            msg = f"{fields!r} asks for fields of a {kind}, not of a record"
            raise SchemaError(msg)
        if kind == "null":
            self.line(depth, f"{target} = None")
        elif kind == "boolean":
            self.line(depth, f"{target} = data[p] != 0")
            self.line(depth, "p += 1")
        elif kind in {"int", "long"}:
            self.long(depth, target)
        elif kind in _FIXED_WIDTH:
            unpack = self.const(struct.Struct("<f" if kind == "float" else "<d").unpack_from, kind)
            self.line(depth, f"{target} = {unpack}(data, p)[0]")
            self.line(depth, f"p += {_FIXED_WIDTH[kind]}")
        elif kind in {"string", "bytes"}:
            size = self.var("n")
            piece = self.span(depth, size)
            self.line(depth, f"{target} = {piece}{'.decode()' if kind == 'string' else ''}")
            self.line(depth, f"p += {size}")
        elif kind == "fixed":
            self.line(depth, f"{target} = data[p:p + {int(schema['size'])}]")
            self.line(depth, f"p += {int(schema['size'])}")
        elif kind == "long-timestamp-micros":
            self.line(depth, f"{target} = _instants(data[p:p + 8])")
            self.line(depth, f"if {target} is None:")
            self.line(depth + 1, f"{target}, p = _instant(data, p)")
            self.line(depth, "else:")
            self.line(depth + 1, "p += 8")
        elif kind == "bytes-decimal":
            self.decimal(schema, depth, target)
        elif kind == "enum":
            self.enum(schema, depth, target)
        elif kind == "map":
            self.map(schema, depth, target)
        elif kind == "union":
            self.union(schema, depth, target, fields)
        else:
            self.record(schema, depth, target, fields)

    def decimal(self, schema: dict[str, Any], depth: int, target: str) -> None:
        known, make = self.cache.decimals(int(schema["precision"]), int(schema.get("scale", 0)))
        known_name, make_name = self.const(known, "decimal"), self.const(make, "make_decimal")
        size, raw = self.var("n"), self.var("b")
        piece = self.span(depth, size)
        self.line(depth, f"{raw} = {piece}")
        self.line(depth, f"{target} = {known_name}({raw})")
        self.line(depth, f"if {target} is None:")
        self.line(depth + 1, f"{target} = {make_name}({raw})")
        self.line(depth, f"p += {size}")

    def enum(self, schema: dict[str, Any], depth: int, target: str) -> None:
        symbols = tuple(schema["symbols"])
        table = self.const(symbols, "symbols")
        index = self.var("x")
        self.long(depth, index)
        self.line(depth, f"if not 0 <= {index} < {len(symbols)}:")
        self.line(depth + 1, f"raise _bad_enum({index}, {len(symbols)})")
        self.line(depth, f"{target} = {table}[{index}]")

    def map(self, schema: dict[str, Any], depth: int, target: str) -> None:
        count, key, item, index = self.var("n"), self.var("k"), self.var("v"), self.var("i")
        self.line(depth, f"{target} = {{}}")
        self.long(depth, count)
        self.line(depth, f"while {count}:")
        self.line(depth + 1, f"if {count} < 0:")
        self.line(depth + 2, f"{count} = -{count}")
        self.skip("long", depth + 2)  # the block's size in bytes, unused
        self.line(depth + 1, f"for {index} in range({count}):")
        self.read("string", depth + 2, key, None)
        self.read(schema["values"], depth + 2, item, None)
        self.line(depth + 2, f"{target}[{key}] = {item}")
        self.long(depth + 1, count)

    def branches(self, branches: list[Any], depth: int) -> list[tuple[int, Any]]:
        """Code that reads a union's index (as its zig-zag byte, into ``x``); the branches,
        null last (an if-chain tests the likelier values first)."""
        table = self.const(parts.union_bytes(len(branches)), "branches")
        self.line(depth, f"x = {table}[data[p]]")
        self.line(depth, "if x is None:")
        self.line(depth + 1, f"x, p = _branch(data, p, {len(branches)})")
        self.line(depth, "else:")
        self.line(depth + 1, "p += 1")
        order = sorted(enumerate(branches), key=lambda b: self.resolve(b[1])[0] == "null")
        return [(2 * i, branch) for i, branch in order]

    def union(
        self, branches: list[Any], depth: int, target: str, fields: Projection | None
    ) -> None:
        chain = self.branches(branches, depth)
        for n, (raw, branch) in enumerate(chain):
            kind = self.resolve(branch)[0]
            if fields is not None and kind not in {"record", "null"}:
                msg = f"{fields!r} asks for fields of a union of {branches}, not of a record"
                raise SchemaError(msg)
            last = n == len(chain) - 1
            self.line(depth, "else:" if last else f"{'if' if n == 0 else 'elif'} x == {raw}:")
            self.read(branch, depth + 1, target, fields if kind == "record" else None)

    def record(
        self, schema: dict[str, Any], depth: int, target: str, fields: Projection | None
    ) -> None:
        name = schema["name"]
        if name in self.inlining:
            msg = f"recursive record {name}"
            raise _Unsupported(msg)
        if fields is not None:
            unknown = set(fields.fields) - {f["name"] for f in schema["fields"]}
            if unknown:
                msg = f"{fields!r}: {name} has no fields {sorted(unknown)}"
                raise SchemaError(msg)
        self.inlining.append(name)
        values, skipped = [], []
        for field in schema["fields"]:
            if fields is not None and field["name"] not in fields.fields:
                skipped.append(field["type"])
                continue
            self.skip_run(skipped, depth)
            skipped = []
            var = self.var("v")
            part = None if fields is None else fields.fields[field["name"]]
            self.read(field["type"], depth, var, part)
            values.append(f"{field['name']!r}: {var}")
        self.skip_run(skipped, depth)
        self.inlining.pop()
        self.line(depth, f"{target} = {{{', '.join(values)}}}")

    def skip_run(self, run: list[Any], depth: int) -> None:
        """Code that skips consecutive fields, remembering the bytes it skipped last.

        Skipped parts of an envelope are mostly the same in every event of a refresh
        (the source block's strings, the window, the published time): when the bytes
        at p start with the bytes skipped last time, they are the same fields again
        (skipping reads nothing past them), so p moves by their length. A run of plain
        numbers (a transaction's order) changes every time: it is skipped as it is.
        """
        kinds = {self.resolve(t)[0] for t in run}
        if kinds <= {"int", "long", "null"}:
            for t in run:
                self.skip(t, depth)
            return
        memo, last, start = self.const([b""], "skipped"), self.var("c"), self.var("q")
        self.line(depth, f"{last} = {memo}[0]")
        self.line(depth, f"if {last} and data.startswith({last}, p):")
        self.line(depth + 1, f"p += len({last})")
        self.line(depth, "else:")
        self.line(depth + 1, f"{start} = p")
        for t in run:
            self.skip(t, depth + 1)
        self.line(depth + 1, "if p <= end:  # skipped whole")
        self.line(depth + 2, f"{memo}[0] = data[{start}:p]")

    # -- skipping -----------------------------------------------------------------
    def skip(self, schema: Any, depth: int) -> None:
        """Code that moves p past a value of ``schema`` without building it."""
        kind, schema = self.resolve(schema)
        if kind in {"int", "long", "enum", "long-timestamp-micros"}:
            self.line(depth, "while data[p] & 128:")
            self.line(depth + 1, "p += 1")
            self.line(depth, "p += 1")
        elif kind in {"string", "bytes", "bytes-decimal"}:
            size = self.var("n")
            self.span(depth, size)
            self.line(depth, f"p += {size}")
        elif kind == "boolean":
            self.line(depth, "p += 1")
        elif kind in _FIXED_WIDTH:
            self.line(depth, f"p += {_FIXED_WIDTH[kind]}")
        elif kind == "fixed":
            self.line(depth, f"p += {int(schema['size'])}")
        elif kind == "union":
            for n, (raw, branch) in enumerate(self.branches(schema, depth)):
                self.line(depth, f"{'if' if n == 0 else 'elif'} x == {raw}:")
                self.line(depth + 1, "pass")
                self.skip(branch, depth + 1)
        elif kind == "record":
            if schema["name"] in self.inlining:
                msg = f"recursive record {schema['name']}"
                raise _Unsupported(msg)
            self.inlining.append(schema["name"])
            for field in schema["fields"]:
                self.skip(field["type"], depth)
            self.inlining.pop()
        elif kind == "map":
            self.map(schema, depth, self.var("m"))  # rare enough not to need a skipping form
        # null: nothing to skip
