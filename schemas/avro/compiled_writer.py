"""The generated values writers in C: one :class:`~schemas.avro._cwriter.Program` per
record schema and column order.

The producer's row reader encodes every changed row it reads; the generated Python
writer of :mod:`.record_writer` still pays the interpreter for each field, about a
quarter of the row reader's CPU in ``make bench`` (py-spy). The extension
``schemas/avro/_cwriter.c`` writes the same fields in C, from a plan
:func:`record_writer._generate <schemas.avro.record_writer.values_writer>` makes
beside the Python source: for each field, in the schema's order, a tuple
``(kind, position, nullable, ...)``:

- ``("int" | "long" | "string", position, nullable)``;
- ``("timestamp", position, nullable, zone, offset)``: ``zone`` the wall zone of naive
  stamps (None: a naive stamp is the Python writer's), ``offset`` that zone's one
  offset in microseconds when it has had one forever (else None: the zone is asked);
- ``("decimal", position, nullable, kept, write, text)``: the Python decimal writer's
  own cache of bytes by text, and its functions for a Decimal and for an amount's text
  (None where text is not taken), so both forms keep and write amounts alike.

The C writer handles the plain case only and gives every other row to the Python
writer, which writes it or raises what it raises (:class:`.record_writer.Unhandled`,
a UnicodeError). tests/unit/test_record_writer.py checks both forms against fastavro,
byte for byte, on random rows.

The extension is optional, as :mod:`.compiled_reader` is: where it was not built,
:func:`compiled` returns None and the Python writer is used; ``QUEUESTREAM_AVRO_C=0``
turns it off too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schemas.avro.compiled_reader import ENABLED, extension

__all__ = ["AVAILABLE", "compiled"]

_cwriter = extension("_cwriter")

#: Whether the compiled writers are built and not turned off (``QUEUESTREAM_AVRO_C``).
AVAILABLE = _cwriter is not None and ENABLED

#: One field's plan, as the module's docstring spells it.
FieldPlan = tuple[Any, ...]


def compiled(
    plan: Sequence[FieldPlan], fallback: Callable[[Sequence[Any]], bytes]
) -> Callable[[Sequence[Any]], bytes] | None:
    """``Program(plan, fallback).write``, or None without the extension."""
    if not AVAILABLE or _cwriter is None:
        return None
    program = _cwriter.Program(tuple(plan), fallback)
    write: Callable[[Sequence[Any]], bytes] = program.write
    return write
