"""What ``queuestream replay`` is asked to do: where to move, read from the command line.

A :class:`ReplaySpec` names exactly one destination: a time, a duration back from
now, the earliest offsets, or given offsets. Durations come as ISO 8601
(``PT2H30M``, as ``kafka-consumer-groups --by-duration`` takes them) or the
shorter ``2h30m``; given offsets come in a file of ``topic,partition,offset``
lines, the format ``kafka-consumer-groups --export`` writes. Everything here is
checked before any broker or database is asked, so a typo fails at once with the
line or text at fault; planning the move is :mod:`consumers.replay_plan`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from queuestream.errors import ConfigurationError
from queuestream.kafka_offsets import Partition

__all__ = ["ReplaySpec", "parse_duration", "read_offsets_file"]


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """Where to move: exactly one of a time, a duration back from now, earliest, offsets."""

    to_datetime: datetime | None = None
    by_duration: timedelta | None = None
    to_earliest: bool = False
    to_offsets: dict[Partition, int] | None = None

    def __post_init__(self) -> None:
        chosen = [
            self.to_datetime is not None,
            self.by_duration is not None,
            self.to_earliest,
            self.to_offsets is not None,
        ]
        options = ("--to-datetime", "--by-duration", "--to-earliest", "--to-offsets")
        if sum(chosen) > 1:
            given = " and ".join(o for o, c in zip(options, chosen, strict=True) if c)
            msg = f"{given} were given: say where to move with only one of them"
            raise ConfigurationError(msg)
        if sum(chosen) != 1:
            msg = f"say where to move: one of {', '.join(options)}"
            raise ConfigurationError(msg)

    def moment(self, now: datetime) -> datetime | None:
        if self.to_datetime is not None:
            return self.to_datetime
        if self.by_duration is not None:
            return now - self.by_duration
        return None

    def describe(self, now: datetime) -> str:
        moment = self.moment(now)
        if moment is not None:
            return f"to {moment.astimezone(UTC).isoformat()}"
        if self.to_earliest:
            return "to the earliest offsets"
        return "to the given offsets"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


#: Kafka's timestamps are milliseconds since this moment: no duration reaches before it.
_KAFKA_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str, option: str = "--by-duration") -> timedelta:
    """``PT2H30M`` (ISO 8601, as kafka-consumer-groups takes it), or ``2h30m``, ``90s``, ``1d``;
    no longer than back to 1970, where Kafka's timestamps begin."""
    try:
        duration = _duration(text, option)
    except (OverflowError, ValueError):  # more days than a timedelta holds
        duration = None
    if duration is None or duration > datetime.now(UTC) - _KAFKA_EPOCH:
        msg = (
            f"{option} {text!r} reaches back before 1970-01-01, where Kafka's timestamps "
            "begin: give a shorter one, or --to-earliest for the oldest offsets"
        )
        raise ConfigurationError(msg)
    return duration


def _duration(text: str, option: str) -> timedelta:
    value = text.strip()
    iso = _ISO_DURATION.fullmatch(value)
    if iso is not None and any(iso.groupdict().values()):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return timedelta(
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    pieces = _DURATION.findall(value)
    if pieces and "".join(f"{n}{u}" for n, u in pieces) == re.sub(r"\s+", "", value):
        return timedelta(**{_UNITS[u.lower()]: float(n) for n, u in pieces})
    msg = f"{option} {text!r} is not a duration: use PT2H30M, 2h30m, 45m or 1d"
    raise ConfigurationError(msg)


_HEADER = ("topic", "partition", "offset")


def read_offsets_file(path: Path) -> dict[Partition, int]:
    """``topic,partition,offset`` lines (the format of ``kafka-consumer-groups --export``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no topic's
    except OSError as exc:
        msg = f"cannot read offsets file {path}: {exc.strerror}"
        raise ConfigurationError(msg) from None
    except UnicodeDecodeError:
        msg = f"offsets file {path} is not UTF-8 text: save it as UTF-8"
        raise ConfigurationError(msg) from None
    found: dict[Partition, int] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if not found and [cell.strip().lower() for cell in row] == list(_HEADER):
            continue  # a header row, as a spreadsheet writes one
        try:
            topic, partition, offset = (cell.strip() for cell in row)
            key, value = (topic, int(partition)), int(offset)
        except ValueError:
            msg = f"{path} line {number}: {','.join(row)!r} is not 'topic,partition,offset'"
            raise ConfigurationError(msg) from None
        if value < 0 or key in found:
            why = "a negative offset" if value < 0 else f"{topic}[{partition}] a second time"
            msg = f"{path} line {number}: {why}; give each partition once, with an offset >= 0"
            raise ConfigurationError(msg)
        found[key] = value
    if not found:
        msg = f"{path} holds no offsets (expected lines 'topic,partition,offset')"
        raise ConfigurationError(msg)
    return found
