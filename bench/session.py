"""One benchmark run as a command: its session (deadline, progress, Kafka, topics) and main.

:func:`session` checks that Kafka answers, hands the run its deadline, progress
lines and a source of fresh topic prefixes, and deletes those topics at the end
(unless ``--keep-topics``). :func:`main_with` runs a benchmark and prints its
report as a table or JSON; a :class:`~bench.errors.BenchError` is one line and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError, Deadline
from bench.output import Progress, err, progress_printer
from bench.scratch import Prefixes, delete_topics, scratch_state_dir
from bench.services import check_kafka, resolve_bootstrap
from queuestream.gc_tuning import tune_for_streaming

__all__ = ["Session", "main_with", "session"]


@dataclass
class Session:
    """What one benchmark run carries: its deadline, progress lines, Kafka and topic prefixes."""

    deadline: Deadline
    progress: Progress
    bootstrap: str
    prefixes: Prefixes


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[Session]:
    """Start a run (Kafka must answer); at the end delete its topics unless --keep-topics."""
    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    started = Session(Deadline(args.timeout), progress_printer(args.json), bootstrap, Prefixes())
    try:
        yield started
    finally:
        if not args.keep_topics:
            # every Refresher creates its topics (a benchmark's other passes too)
            delete_topics(bootstrap, started.prefixes.made)


def main_with(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
) -> int:
    """Log to stderr, ``run`` (its producers' state in a throwaway folder:
    :func:`~bench.scratch.scratch_state_dir`), then print the report as JSON or a table;
    1 on BenchError."""
    tune_for_streaming()  # as the commands measured do (queuestream.cli.main)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with scratch_state_dir():
            report = run(args)
    except BenchError as exc:
        err.print(f"[bold red]bench failed[/]: {exc}", highlight=False)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    return 0
