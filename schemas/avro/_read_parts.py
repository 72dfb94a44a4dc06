"""What the readers :mod:`.fast_reader` generates call: lookup tables, varints, caches.

The generated code handles the common case inline (a one-byte varint is one lookup
in :data:`ONE_BYTE`, a short length one lookup in :data:`SPAN`) and calls these
functions for the rest. Values are made exactly as fastavro makes them.

A :class:`ValueCache` spares the costliest values: timestamp-micros datetimes by
their 8-byte varint (the rows of one refresh carry the same instants over and over:
a row's CreatedDate and ModifiedDate, the rows of one source transaction) and
decimals by their bytes (prices and totals repeat). It holds immutable values only
and empties a dict that reaches :data:`CACHE_LIMIT` entries (about 4 MB), so memory
stays bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from functools import cache

__all__ = [
    "CACHE_LIMIT",
    "ONE_BYTE",
    "SPAN",
    "ValueCache",
    "bad_enum",
    "branch",
    "long",
    "span",
    "truncated",
    "union_bytes",
]

#: The zig-zag value of a one-byte varint; None where the byte has a continuation bit.
ONE_BYTE = tuple(None if b & 128 else (b >> 1) ^ -(b & 1) for b in range(256))
#: 1 + the length a one-byte varint gives; None for a longer varint or a negative length.
SPAN = tuple(None if b & 129 else 1 + (b >> 1) for b in range(256))
#: A cache that reaches this many values is emptied.
CACHE_LIMIT = 32768

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WORD = struct.Struct("<Q").unpack_from
#: Bit 7 of each byte of a varint of exactly eight bytes: set in the first seven.
_EIGHT_BYTES = (0x8080808080808080, 0x0080808080808080)


def long(data: bytes, p: int) -> tuple[int, int]:
    """The varint at ``p`` (any length): (its zig-zag value, the position after it)."""
    n = data[p] & 127
    b = data[p + 1]
    if b < 128:
        n |= b << 7
        return (n >> 1) ^ -(n & 1), p + 2
    n |= (b & 127) << 7
    b = data[p + 2]
    if b < 128:
        n |= b << 14
        return (n >> 1) ^ -(n & 1), p + 3
    n |= (b & 127) << 14
    shift = 21
    p += 3
    while True:
        b = data[p]
        p += 1
        n |= (b & 127) << shift
        if b < 128:
            return (n >> 1) ^ -(n & 1), p
        shift += 7


def span(data: bytes, p: int) -> tuple[int, int]:
    """A length at ``p`` that :data:`SPAN` does not give: (1 + length, its last byte)."""
    if data[p] < 128:  # one byte, odd: negative
        n, end = (data[p] >> 1) ^ -(data[p] & 1), p + 1
    else:
        n, end = long(data, p)
    if n < 0:
        msg = f"negative length {n} at byte {p}"
        raise ValueError(msg)
    return 1 + n, end - 1


@cache
def union_bytes(count: int) -> tuple[int | None, ...]:
    """Each byte that is a whole union index of ``count`` branches, as itself; else None."""
    return tuple(b if b % 2 == 0 and b < 2 * count else None for b in range(256))


def branch(data: bytes, p: int, count: int) -> tuple[int, int]:
    """A union index at ``p`` that :func:`union_bytes` does not give: (2 * index, end)."""
    if data[p] < 128:
        index, end = (data[p] >> 1) ^ -(data[p] & 1), p + 1
    else:
        index, end = long(data, p)  # more bytes than needed, valid all the same
    if not 0 <= index < count:
        msg = f"union branch {index} out of range (0..{count - 1}) at byte {p}"
        raise ValueError(msg)
    return 2 * index, end


def bad_enum(index: int, count: int) -> ValueError:
    return ValueError(f"enum index {index} out of range (0..{count - 1})")


def truncated(p: int, end: int) -> EOFError:
    return EOFError(f"the message ends inside the record ({end} bytes, needed more than {p})")


class ValueCache:
    """The datetimes and decimals readers made, by their bytes, for the readers that share it.

    One per codec (a consumer's): a timestamp-micros by its 8-byte varint (current
    instants take eight bytes), a decimal by its two's-complement bytes. Each dict is
    emptied when it reaches :data:`CACHE_LIMIT` entries.
    """

    __slots__ = ("decimal_values", "instant_values")

    def __init__(self) -> None:
        self.instant_values: dict[bytes, datetime] = {}
        self.decimal_values: dict[tuple[int, int], dict[bytes, Decimal]] = {}

    def instant(self, data: bytes, p: int) -> tuple[datetime, int]:
        """The timestamp-micros at ``p``: (aware UTC datetime as fastavro makes it, end)."""
        if p + 8 <= len(data):
            word = _WORD(data, p)[0]
            if word & _EIGHT_BYTES[0] == _EIGHT_BYTES[1]:  # the common case: eight bytes
                word = (word & 0x007F007F007F007F) | ((word >> 1) & 0x3F803F803F803F80)
                word = (word & 0x00003FFF00003FFF) | ((word >> 2) & 0x0FFFC0000FFFC000)
                n = (word & 0x0FFFFFFF) | ((word >> 4) & 0x00FFFFFFF0000000)
                value = _EPOCH + timedelta(0, 0, (n >> 1) ^ -(n & 1))
                known = self.instant_values
                if len(known) >= CACHE_LIMIT:
                    known.clear()
                known[data[p : p + 8]] = value
                return value, p + 8
        b = data[p]
        micros, end = ((b >> 1) ^ -(b & 1), p + 1) if b < 128 else long(data, p)
        return _EPOCH + timedelta(0, 0, micros), end

    def decimals(
        self, precision: int, scale: int
    ) -> tuple[Callable[[bytes], Decimal | None], Callable[[bytes], Decimal]]:
        """(lookup, maker) of decimal(precision, scale) values by their two's-complement bytes.

        The maker is fastavro's: ``Context(prec=precision).create_decimal(unscaled)
        .scaleb(-scale, context)``, rounded to the precision like fastavro.
        """
        context = Context(prec=precision)
        create = context.create_decimal
        made = self.decimal_values.setdefault((precision, scale), {})

        def make(unscaled: bytes) -> Decimal:
            value = create(int.from_bytes(unscaled, "big", signed=True)).scaleb(-scale, context)
            if len(made) >= CACHE_LIMIT:
                made.clear()
            made[unscaled] = value
            return value

        return made.get, make
