"""The options every benchmark takes: services, the simulated rows, topics, output.

Each benchmark adds its own options to the parser after :func:`add_common_arguments`
and calls :func:`check_common_arguments` on what was parsed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_common_arguments", "add_run_arguments", "check_common_arguments"]


def add_common_arguments(
    p: argparse.ArgumentParser,
    *,
    rows: int,
    each: tuple[str, tuple[str, ...]],
    kafka_help: str,
    breakdown_help: str,
    profile_help: str,
) -> None:
    """The options every benchmark takes: services, the simulated rows, topics, output.

    ``each``: the option naming what is measured, one after the other, and its
    choices, e.g. ``("--backends", ("postgres", "sqlite"))``; all by default.
    """
    option, names = each
    p.add_argument(
        option,
        default=",".join(names),
        help=f"comma-separated, of {', '.join(names)} (default: %(default)s)",
    )
    p.set_defaults(_each=each)
    p.add_argument(
        "--rows",
        type=int,
        default=rows,
        help="changed rows to create per source (default: %(default)s)",
    )
    p.add_argument(
        "--postgres-url",
        help="SQLAlchemy URL of a PostgreSQL server (default: scripts/postgres-local.sh url)",
    )
    p.add_argument(
        "--bootstrap-servers",
        help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS, else scripts/kafka-local.sh bootstrap)",
    )
    p.add_argument(
        "--per-transaction",
        type=int,
        default=500,
        help="simulator actions per source transaction (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=42, help="simulator seed (default: %(default)s)")
    p.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions per change topic (default: %(default)s)",
    )
    p.add_argument(
        "--first-window-hours",
        type=float,
        default=24.0 * 7,
        help="the refresh's first window; must cover the generated rows (default: %(default)s)",
    )
    p.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE", help=kafka_help)
    p.add_argument("--breakdown", action="store_true", help=breakdown_help)
    p.add_argument("--profile", type=Path, metavar="DIR", help=profile_help)
    p.add_argument("--keep-topics", action="store_true", help="do not delete the topics made")
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How long a benchmark may take and what it prints: ``--timeout``, ``--json``, ``-v``."""
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up after this many seconds in all (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    p.add_argument("-v", "--verbose", action="store_true", help="log queuestream at INFO")


def check_common_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate what :func:`add_common_arguments` added.

    The ``each`` option becomes a list, ``--kafka`` a dict.
    """
    option, names = args._each
    dest = option.removeprefix("--").replace("-", "_")
    chosen = [item.strip() for item in getattr(args, dest).split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        p.error(f"{option}: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(names)}")
    setattr(args, dest, chosen)
    del args._each
    if args.rows < 1:
        p.error("--rows must be at least 1")
    try:
        args.kafka = dict(item.split("=", 1) for item in args.kafka)
    except ValueError:
        p.error("--kafka takes KEY=VALUE")
