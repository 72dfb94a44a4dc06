"""Avro record writers generated from a schema: Python source made once, compiled, reused.

fastavro's writer interprets the schema for every record: it walks the fields,
resolves each union by testing the value against its branches and converts
logical types through generic helpers. The producer writes hundreds of
thousands of rows of the same few record schemas, so :func:`record_writer`
turns a record schema into the source of one function, straight-line code with
a statement or two per field, compiles it once and hands it out.

The function writes only what it knows to be written exactly as fastavro writes
it: ``int``/``long`` from ``int`` (no ``bool``), ``string`` from ``str``,
``timestamp-micros`` from an *aware* ``datetime``, ``decimal`` (bytes) from a
finite ``Decimal`` that fits the precision and scale, and ``["null", X]`` of
those. Anything else (a naive datetime, which fastavro reads as UTC; a value
that does not fit; a type it does not handle) raises :class:`Unhandled`, and the
caller writes the record with fastavro, the reference, which writes it or says
why not. A property test (``tests/unit/test_record_writer.py``) checks
byte-for-byte equality with fastavro on random rows of every table.

A writer made with a ``wall_zone`` also takes a *naive* datetime, as the wall
time it is in that zone: exactly what ``value.replace(tzinfo=wall_zone)`` would
mean (fold 0 in a repeated hour). The sync database stamps rows in its local
time; turning each of them into an aware datetime first costs more than the
rest of the timestamp's writing (:mod:`.wall_time`). In a zone of one offset
forever (UTC, ``Etc/GMT+5``) the zone is not asked at all (:func:`.wall_time.fixed_offset`).

A refresh's timestamps lie close together, and a timestamp's varint is eight bytes
whose last four change every 134 seconds: each writer keeps those of the last
timestamp it wrote (:func:`timestamp_varint_writer`). Many are equal, too: a new
row's CreatedDate is its ModifiedDate, and an order's lines share its stamps. The
wall timestamp fields of one record keep the last stamp written, with its bytes, for
the next one equal to it (:func:`_wall_timestamp_writer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, cast

from schemas.avro import compiled_writer
from schemas.avro.wall_time import EPOCH as _EPOCH
from schemas.avro.wall_time import NAIVE_EPOCH as _NAIVE_EPOCH
from schemas.avro.wall_time import fixed_offset

__all__ = [
    "POSITIVE_INLINE",
    "POSITIVE_VARINTS",
    "RecordWriter",
    "Unhandled",
    "ValuesWriter",
    "record_writer",
    "timestamp_varint_writer",
    "values_writer",
    "varint",
]

#: Writes the Avro binary body of one record given as a mapping of field name to value.
RecordWriter = Callable[[Mapping[str, Any]], bytes]
#: Writes the Avro binary body of one record given as its values in a known order.
ValuesWriter = Callable[[Sequence[Any]], bytes]

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
_INT_MIN = -(1 << 31)
_INT_MAX = (1 << 31) - 1
#: Varints of the zig-zagged values below 2**14 (values -8192 .. 8191), precomputed.
_SMALL = 1 << 14
#: Distinct decimals whose bytes a writer keeps (then it starts over).
_DECIMALS_KEPT = 50_000
#: The digits Decimal's default context keeps: scaleb is exact up to there.
_DECIMAL_DIGITS = 28


class Unhandled(Exception):
    """A value the generated writer does not write itself: write the record with fastavro."""


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = tuple(_varint_slow(n) for n in range(_SMALL))
#: 14 bits as the two bytes of a varint with more to follow (both with the high bit set).
_MORE = tuple(bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(_SMALL))


#: Varints of 0 .. _INLINE - 1 (ids and counts), which generated code looks up inline;
#: public as POSITIVE_VARINTS, below POSITIVE_INLINE, for other code that does.
_INLINE = POSITIVE_INLINE = 1 << 16
_POSITIVE = POSITIVE_VARINTS = tuple(_varint_slow(n << 1) for n in range(_INLINE))
#: A string's length (below _SMALL // 2) as its varint after a union's branch 1, which
#: generated code looks up inline (without the branch: _POSITIVE).
_BRANCH_LENGTHS = tuple(b"\x02" + length for length in _POSITIVE[: _SMALL // 2])


def varint(value: int) -> bytes:
    """Avro's zig-zag varint of a long (``value`` within 64 bits), 14 bits per table look-up."""
    n = (value << 1) ^ (value >> 63)
    if n < _SMALL:
        return _VARINTS[n]
    if n < 1 << 28:
        return _MORE[n & 0x3FFF] + _VARINTS[n >> 14]
    if n < 1 << 42:
        return _MORE[n & 0x3FFF] + _MORE[(n >> 14) & 0x3FFF] + _VARINTS[n >> 28]
    if n < 1 << 56:
        return (
            _MORE[n & 0x3FFF]
            + _MORE[(n >> 14) & 0x3FFF]
            + _MORE[(n >> 28) & 0x3FFF]
            + _VARINTS[n >> 42]
        )
    return _varint_slow(n)


def _decimal_writer(precision: int, scale: int) -> Callable[[Any], bytes]:
    """Writes a decimal (bytes) the way fastavro does: the unscaled value, two's complement,
    big-endian, in ``(abs(unscaled).bit_length() + 8) // 8`` bytes, length first.

    Amounts repeat, so what was written is kept by the value's string, which tells
    sign, digits and exponent apart (``1.5`` and ``1.50`` are equal but not written
    alike: fastavro refuses the second for a scale of 1).
    """
    written: dict[str, bytes] = {}

    def write(value: Any) -> bytes:
        if type(value) is not Decimal:
            raise Unhandled
        text = str(value)
        found = written.get(text)
        if found is not None:
            return found
        if not value.is_finite():
            raise Unhandled
        _sign, digits, exponent = value.as_tuple()
        # fastavro refuses more digits than the precision and a finer scale; the
        # producer also refuses a magnitude the precision cannot hold (1E+30).
        if (
            len(digits) > precision
            or exponent + scale < 0  # type: ignore[operator]  # finite: an int
            or value.adjusted() + 1 + scale > precision
        ):
            raise Unhandled
        unscaled = int(value.scaleb(scale))
        size = (abs(unscaled).bit_length() + 8) // 8
        found = varint(size) + unscaled.to_bytes(size, "big", signed=True)
        if len(written) >= _DECIMALS_KEPT:
            written.clear()
        written[text] = found
        return found

    def write_text(text: str) -> bytes:
        """The decimal ``text`` spells (an amount read as its text: PostgreSQL's numeric),
        kept by that text."""
        try:
            value = Decimal(text)
        except ArithmeticError:  # not a number's text: fastavro says why
            raise Unhandled from None
        found = write(value)
        if len(written) >= _DECIMALS_KEPT:
            written.clear()
        written[text] = found
        return found

    write.kept = written  # type: ignore[attr-defined]  # looked up inline (_inline_decimal)
    write.text = write_text  # type: ignore[attr-defined]  # called inline for a str
    return write


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise Unhandled
    data = value.encode()
    return varint(len(data)) + data


def _long(value: Any) -> bytes:
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise Unhandled
    return varint(value)


def _int(value: Any) -> bytes:
    """An ``int`` field: 32 bits (fastavro's union resolution checks that range; outside it,
    fastavro decides)."""
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise Unhandled
    return varint(value)


def timestamp_varint_writer() -> Callable[[int], bytes]:
    """:func:`varint` for timestamps that lie close together: the varint of a timestamp
    of our time is eight bytes (zig-zagged, below 2**56), whose last four stand for its
    bits from 28 up and change every 134 seconds. The last ones written are kept, as
    one tuple replaced at once (a writer may be shared between threads)."""
    last: list[tuple[int, bytes]] = [(-1, b"")]

    def write(value: int) -> bytes:
        n = (value << 1) ^ (value >> 63)
        if not _SMALL << 28 <= n < 1 << 56:
            return varint(value)
        high = n >> 28
        kept_high, tail = last[0]
        if high != kept_high:
            tail = _MORE[high & 0x3FFF] + _VARINTS[high >> 14]
            last[0] = (high, tail)
        return _MORE[n & 0x3FFF] + _MORE[(n >> 14) & 0x3FFF] + tail

    return write


def _timestamp_writer() -> Callable[[Any], bytes]:
    """timestamp-micros from an aware datetime, as fastavro computes it."""
    write_varint = timestamp_varint_writer()

    def write(value: Any) -> bytes:
        if type(value) is not datetime or value.tzinfo is None:
            raise Unhandled
        delta = value - _EPOCH
        return write_varint((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)

    return write


def _wall_timestamp_writer(
    zone: tzinfo, last: list[tuple[Any, int, bytes]]
) -> Callable[[Any], bytes]:
    """timestamp-micros from an aware datetime, or a naive one as wall time in ``zone``.

    ``last`` holds the last timestamp written and its bytes (shared by the timestamp
    fields of one record: a new row's CreatedDate is its ModifiedDate, an order's
    lines share its stamps); a timestamp equal to it, with the same fold, is not
    written again. Equal naive datetimes are the same wall time, equal aware ones the
    same instant, and a naive one never equals an aware one."""
    utcoffset = zone.utcoffset
    write_varint = timestamp_varint_writer()
    fixed = fixed_offset(zone)
    base = None if fixed is None else _NAIVE_EPOCH + fixed

    def write(value: Any) -> bytes:
        if type(value) is not datetime:
            raise Unhandled
        kept, fold, written = last[0]
        if value == kept and value.fold == fold:
            return written
        if value.tzinfo is not None:
            delta = value - _EPOCH
        elif base is not None:
            delta = value - base
        else:
            offset = utcoffset(value)
            if offset is None:
                raise Unhandled
            delta = (value - _NAIVE_EPOCH) - offset
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        written = write_varint(micros)
        last[0] = (value, value.fold, written)
        return written

    return write


def _plain_writer(
    schema: Any, wall_zone: tzinfo | None, last_stamp: list[tuple[Any, int, bytes]]
) -> tuple[str, Callable[[Any], bytes]] | None:
    """The name and function that write a non-union ``schema``, or None if not handled;
    ``last_stamp``: the last wall timestamp written, shared by a record's fields."""
    if schema == "int":
        return "_int", _int
    if schema == "long":
        return "_long", _long
    if schema == "string":
        return "_string", _string
    if isinstance(schema, dict):
        logical, base = schema.get("logicalType"), schema.get("type")
        if logical == "timestamp-micros" and base == "long":
            if wall_zone is not None:
                return "_wall_timestamp", _wall_timestamp_writer(wall_zone, last_stamp)
            return "_timestamp", _timestamp_writer()
        if logical == "decimal" and base == "bytes":
            precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
            if precision > _DECIMAL_DIGITS:
                return None
            name = f"_decimal_{precision}_{scale}"
            return name, _decimal_writer(precision, scale)
        if logical is None and base in ("int", "long", "string"):
            return _plain_writer(base, wall_zone, last_stamp)
    return None


def record_writer(
    schema: Mapping[str, Any], wall_zone: tzinfo | None = None
) -> RecordWriter | None:
    """A generated writer of ``schema`` (a record), or None when a field's type is not one
    it handles (then fastavro writes every record). ``wall_zone``: naive timestamps are
    wall times in that zone (without it, a naive timestamp is Unhandled).

    The function made for a record of an int ``Id`` and a nullable string ``Name`` reads::

        def write(row):
            get = row.get
            v = get('Id')
            p0 = _POSITIVE[v] if type(v) is int and 0 <= v < 65536 else _int(v)
            v = get('Name')
            p1 = b'\\x00' if v is None else b'\\x02' + _string(v)
            return b''.join((p0, p1))
    """
    made = _generate(schema, wall_zone, None)
    return None if made is None else cast("RecordWriter", made[0])


def values_writer(
    schema: Mapping[str, Any],
    columns: Sequence[str],
    wall_zone: tzinfo | None = None,
    *,
    python: bool = False,
) -> ValuesWriter | None:
    """As :func:`record_writer`, for a record given as its values in the order of
    ``columns`` (a row as read, with no dict made of it): ``v = row[3]`` where the other
    reads ``v = get('Id')``. None also when a field is not one of ``columns``. A decimal
    field also takes its amount as text (a str: PostgreSQL's numeric as the producer
    reads it), written as the Decimal it spells, kept by that text.

    The writer returned is the compiled one (:mod:`.compiled_writer`) where the extension
    is built, which gives the generated Python writer what it does not write itself;
    ``python``: the Python writer alone."""
    fields = [field["name"] for field in schema["fields"]]
    if not set(fields) <= set(columns):
        return None
    positions = {name: columns.index(name) for name in fields}
    made = _generate(schema, wall_zone, positions)
    if made is None:
        return None
    writer, plan = made
    fast = None if python else compiled_writer.compiled(plan, writer)
    return cast("ValuesWriter", fast or writer)


def _when_a(part: str, kind: str, nullable: bool) -> list[str]:
    """The opening of inline statements for a value ``v`` of type ``kind``: a null (when
    ``nullable``) written as the union's branch 0, then the test for ``kind``."""
    if not nullable:
        return [f"    if type(v) is {kind}:"]
    return ["    if v is None:", f"        {part} = b'\\x00'", f"    elif type(v) is {kind}:"]


def _inline_string(part: str, nullable: bool) -> list[str]:
    """Statements writing the string ``v`` into ``part`` as :func:`_string` does (behind
    the union's branch when ``nullable``), without calling it: a row has up to 14."""
    if nullable:
        lengths, below, branch = "_BRANCH_LENGTHS", len(_BRANCH_LENGTHS), "b'\\x02' + "
    else:
        lengths, below, branch = "_POSITIVE", _INLINE, ""
    return [
        *_when_a(part, "str", nullable),
        "        d = v.encode()",
        "        n = len(d)",
        f"        {part} = ({lengths}[n] if n < {below} else {branch}varint(n)) + d",
        "    else:",
        f"        {part} = {branch}_string(v)",
    ]


def _inline_decimal(part: str, name: str, nullable: bool, text: bool) -> list[str]:
    """Statements writing the decimal ``v`` into ``part``: looked up among the ones its
    writer ``name`` wrote (by its text, as that writer keeps them), written by it if not
    there (its bytes are never empty), without calling it for an amount it wrote. With
    ``text``, ``v`` may also be the amount's text (a str), looked up as it is."""
    branch = "b'\\x02' + " if nullable else ""
    as_text = [
        "    elif type(v) is str:",
        f"        {part} = {branch}({name}_kept.get(v) or {name}_text(v))",
    ]
    return [
        *_when_a(part, "Decimal", nullable),
        f"        {part} = {branch}({name}_kept.get(str(v)) or {name}(v))",
        *(as_text if text else []),
        "    else:",
        f"        {part} = {branch}{name}(v)",
    ]


def _field_plan(
    name: str,
    function: Callable[[Any], bytes],
    position: int,
    nullable: bool,
    wall_zone: tzinfo | None,
) -> tuple[Any, ...]:
    """The field's plan for the compiled writer (:mod:`.compiled_writer`), whose writer
    here is ``name``: ``function``."""
    if name.startswith("_decimal_"):
        return ("decimal", position, nullable, function.kept, function, function.text)  # type: ignore[attr-defined]
    if name.startswith("_wall_timestamp"):
        assert wall_zone is not None  # a wall timestamp writer has its zone
        fixed = fixed_offset(wall_zone)
        offset = None if fixed is None else fixed // timedelta(microseconds=1)
        return ("timestamp", position, nullable, wall_zone, offset)
    if name.startswith("_timestamp"):
        return ("timestamp", position, nullable, None, None)
    return (name.removeprefix("_"), position, nullable)  # int, long, string


def _generate(
    schema: Mapping[str, Any], wall_zone: tzinfo | None, positions: Mapping[str, int] | None
) -> tuple[Callable[[Any], bytes], list[tuple[Any, ...]]] | None:
    """The generated writer of ``schema`` and, given ``positions``, each field's plan for
    the compiled writer (else an empty list); None when a field is not one it writes."""
    names: dict[str, Any] = {
        "Unhandled": Unhandled,
        "_POSITIVE": _POSITIVE,
        "_int": _int,
        "_BRANCH_LENGTHS": _BRANCH_LENGTHS,
        "varint": varint,
        "Decimal": Decimal,
    }
    lines = ["def write(row):"]
    if positions is None:
        lines.append("    get = row.get")
    parts = []
    plan: list[tuple[Any, ...]] = []
    last_stamp: list[tuple[Any, int, bytes]] = [(None, 0, b"")]
    for number, field in enumerate(schema["fields"]):
        ftype = field["type"]
        nullable = isinstance(ftype, list) and len(ftype) == 2 and ftype[0] == "null"
        found = _plain_writer(ftype[1] if nullable else ftype, wall_zone, last_stamp)
        if found is None:
            return None
        name, function = found
        if name in ("_timestamp", "_wall_timestamp"):
            name = f"{name}_{number}"  # one each: it keeps the last timestamp's high bytes
        names[name] = function
        # An int below _INLINE is looked up inline, any other written by _int.
        write = (
            f"(_POSITIVE[v] if type(v) is int and 0 <= v < {_INLINE} else _int(v))"
            if name == "_int"
            else f"{name}(v)"
        )
        if nullable:
            write = f"b'\\x00' if v is None else b'\\x02' + {write}"
        if positions is None:
            read = f"get({field['name']!r})"
        else:
            position = positions[field["name"]]
            read = f"row[{position}]"
            plan.append(_field_plan(name, function, position, nullable, wall_zone))
        lines.append(f"    v = {read}")
        if name == "_string":
            lines += _inline_string(f"p{number}", nullable)
        elif name.startswith("_decimal_"):
            names[f"{name}_kept"] = function.kept  # type: ignore[attr-defined]
            names[f"{name}_text"] = function.text  # type: ignore[attr-defined]
            lines += _inline_decimal(f"p{number}", name, nullable, text=positions is not None)
        else:
            lines.append(f"    p{number} = {write}")
        parts.append(f"p{number}")
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    source = "\n".join(lines)
    code = compile(source, f"<record writer of {schema.get('name', 'record')}>", "exec")
    exec(code, names)
    writer: Callable[[Any], bytes] = names["write"]
    return writer, plan
