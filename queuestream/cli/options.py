"""What every command reads from its command line: global options, shared options, times.

The global options (``queuestream --source URL ... COMMAND``) are parsed once by
:func:`global_options`, the app's callback, and kept in :data:`state` until the
command runs; :func:`command_settings` then builds the process's one ``Settings``
object from them, the command's own options, the TOML file and the environment.
Options that several commands take (``TARGET``, ``--target``, ``--max-errors``,
``--metrics-port``) are declared here once, so they read the same everywhere.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any

import typer

from queuestream.errors import ConfigurationError
from queuestream.settings import Settings, load_settings

__all__ = [
    "TIME_HELP",
    "ConfigOpt",
    "GlobalOptions",
    "MaxErrorsOpt",
    "MetricsPortOpt",
    "TargetArg",
    "TargetUrlOpt",
    "check_above",
    "check_at_least",
    "command_settings",
    "global_options",
    "parse_since",
    "parse_time",
    "state",
]


@dataclass
class GlobalOptions:
    """The options given before the command's name, for the command to build settings."""

    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    traceback: bool = False


state = GlobalOptions()

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML settings file (also QUEUESTREAM_CONFIG).", show_default=False
    ),
]


def global_options(
    config: ConfigOpt = None,
    source: Annotated[
        str | None, typer.Option(help="Sync database URL (QUEUESTREAM_SOURCE_URL).")
    ] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS).")
    ] = None,
    topic_prefix: Annotated[str | None, typer.Option(help="Topic prefix (default exigo).")] = None,
    registry_url: Annotated[
        str | None, typer.Option(help="Schema registry URL (SCHEMA_REGISTRY_URL).")
    ] = None,
    source_timezone: Annotated[
        str | None, typer.Option(help="IANA zone the source stamps dates in.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings only.")] = False,
    traceback: Annotated[bool, typer.Option(help="Show tracebacks of errors.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # librdkafka repeats connection failures many times a second; the errors that matter
    # reach the user as queuestream errors. Its log shows with --verbose.
    logging.getLogger("queuestream.librdkafka").setLevel(
        logging.DEBUG if verbose else logging.CRITICAL
    )
    state.config = config
    state.traceback = traceback
    state.overrides = {
        "source_url": source,
        "kafka_bootstrap_servers": bootstrap_servers,
        "topic_prefix": topic_prefix,
        "schema_registry_url": registry_url,
        "source_timezone": source_timezone,
    }


def command_settings(**more: Any) -> Settings:
    """The process's settings: the global options, then ``more`` from the command."""
    return load_settings(state.config, **{**state.overrides, **more})


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
        "(QUEUESTREAM_METRICS_PORT; the address is metrics_host). 0: none.",
        show_default=False,
    ),
]

TargetArg = Annotated[str, typer.Argument(help="The sample target: accounting or shipping.")]
TargetUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="Target database URL (default sqlite:///var/<target>.db).",
        show_default=False,
    ),
]

MaxErrorsOpt = Annotated[
    int | None,
    typer.Option(
        help="Continue on the first N events that cannot be applied (to <topic>.dlq); "
        "one more stops the consumer. Default 0.",
        show_default=False,
    ),
]

TIME_HELP = "ISO date-time; without a zone, this machine's local time (as kafka-consumer-groups)."


#: The times a command takes: a day inside the calendar's ends, so that turning one into
#: another zone or stepping a margin from it stays in the calendar.
EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC)
#: Kafka's timestamps are milliseconds since this moment; none is before it.
KAFKA_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(
    text: str, zone: tzinfo | None, option: str, *, kafka_time: bool = False
) -> datetime:
    """An ISO date-time (or 1/1/2017 [08:00]); without a zone it is in ``zone`` (None: local).

    ``kafka_time``: the time is looked up in Kafka's timestamps, which begin in 1970
    (an earlier one would reach the broker as a negative number, which means something
    else there), so it is refused too.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        for fmt in ("%m/%d/%Y", "%m/%d/%Y %H:%M"):
            try:
                value = datetime.strptime(text, fmt)  # noqa: DTZ007 - zone applied below
                break
            except ValueError:
                continue
        else:
            msg = (
                f"{option} {text!r} is not a date: use 2017-01-01, 2017-01-01T08:00, "
                "2017-01-01T08:00:00+02:00 or 1/1/2017"
            )
            raise ConfigurationError(msg) from None
    moment: datetime | None
    try:
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone) if zone is not None else value.astimezone()
        moment = value.astimezone(UTC)
    except (OverflowError, ValueError):  # past the calendar's ends in UTC
        moment = None
    earliest = KAFKA_EPOCH if kafka_time else EARLIEST_TIME
    if moment is None or not earliest <= moment <= LATEST_TIME:
        why = " (Kafka's timestamps begin there)" if kafka_time else ""
        first, last = earliest.date().isoformat(), LATEST_TIME.date().isoformat()
        msg = f"{option} {text!r} is out of range: give a time from {first}{why} to {last}"
        raise ConfigurationError(msg)
    return moment


def parse_since(text: str | None, settings: Settings) -> datetime | None:
    """``--since``: a time in the source's zone (the one its ModifiedDate is stamped in)."""
    return None if text is None else parse_time(text, settings.zone, "--since")


def check_at_least(value: float | None, least: float, option: str) -> None:
    """A number option (given) below ``least`` stops before anything connects: a negative
    interval would refresh without a pause, a zero per-transaction would never finish."""
    if value is not None and value < least:
        msg = f"{option} {value:g}: give {least:g} or more"
        raise ConfigurationError(msg)


def check_above(value: float | None, bound: float, option: str) -> None:
    """A number option (given) at or below ``bound`` stops before anything connects."""
    if value is not None and value <= bound:
        msg = f"{option} {value:g}: give more than {bound:g}"
        raise ConfigurationError(msg)
