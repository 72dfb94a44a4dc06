"""The source's wall times as instants: microseconds since the epoch.

The sync database stamps rows in its local time, naive (``source_timezone``). A naive
stamp is read as the wall time it is in that zone, exactly as
``value.replace(tzinfo=zone)`` would mean (fold 0 in a repeated hour); an aware one is
its own instant. In a zone that has had one offset forever (UTC, ``Etc/GMT+5``, a fixed
``timezone``) the zone is read once rather than asked for every stamp
(:func:`fixed_offset`). The Avro writers (:mod:`.record_writer`, and the compiled ones)
write ``timestamp-micros`` the same way; the producer compares versions in these
microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo

__all__ = ["EPOCH", "NAIVE_EPOCH", "fixed_offset", "wall_micros", "wall_micros_in"]

#: The epoch, an instant.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The epoch as a wall time.
NAIVE_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001


def fixed_offset(zone: tzinfo) -> timedelta | None:
    """The offset of a zone that has had one offset forever (a fixed ``timezone``, UTC,
    ``Etc/*``), else None."""
    if isinstance(zone, timezone):
        return zone.utcoffset(None)
    key = getattr(zone, "key", None)
    if isinstance(key, str) and (key in ("UTC", "UCT", "Zulu", "GMT") or key.startswith("Etc/")):
        return zone.utcoffset(NAIVE_EPOCH)
    return None


def wall_micros_in(zone: tzinfo) -> Callable[[datetime], int]:
    """:func:`wall_micros` in ``zone``, with a zone of one offset read once."""
    fixed = fixed_offset(zone)
    if fixed is None:
        return lambda value: wall_micros(value, zone)
    base = NAIVE_EPOCH + fixed

    def micros(value: datetime) -> int:
        if value.tzinfo is not None:
            delta = value - EPOCH
        else:
            delta = value - base
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds

    return micros


def wall_micros(value: datetime, zone: tzinfo) -> int:
    """Microseconds since the epoch of ``value``: an aware datetime, or a naive one read as
    the wall time it is in ``zone`` (as ``value.replace(tzinfo=zone)``: fold 0)."""
    if value.tzinfo is not None:
        delta = value - EPOCH
    else:
        offset = zone.utcoffset(value)
        if offset is None:
            msg = f"the zone {zone} has no UTC offset at {value}"
            raise ValueError(msg)
        # Timedeltas only: no datetime near year 1 or 9999 is made out of range.
        delta = (value - NAIVE_EPOCH) - offset
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
