"""Recovery commands: ``replay`` moves a group's offsets, ``rebuild`` builds a past target.

Each command parses its options, builds the settings and calls the library; the
replay plan is drawn by :mod:`queuestream.cli.render_replay`. Library modules are
imported inside the commands so that ``queuestream --help`` starts at once.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from queuestream.cli.options import (
    TIME_HELP,
    MaxErrorsOpt,
    TargetArg,
    command_settings,
    parse_time,
)
from queuestream.cli.output import console, err_console, progress_bar
from queuestream.cli.signals import on_stop_signals

if TYPE_CHECKING:
    from consumers.batch_apply import BatchOutcome

__all__ = ["rebuild", "replay"]


def replay(
    group: Annotated[str, typer.Option(help="The consumer group to move.", show_default=False)],
    to_datetime: Annotated[
        str | None,
        typer.Option(help=f"Move to the first event at or after this time. {TIME_HELP}"),
    ] = None,
    by_duration: Annotated[
        str | None, typer.Option(help="Move back this long from now: PT2H30M, 2h30m, 45m, 1d.")
    ] = None,
    to_earliest: Annotated[bool, typer.Option(help="Move to the oldest retained offsets.")] = False,
    to_offsets: Annotated[
        Path | None,
        typer.Option(help="CSV of topic,partition,offset lines (kafka-consumer-groups --export)."),
    ] = None,
    topics: Annotated[
        list[str] | None,
        typer.Option(
            help="Topics (or table names) to move; repeat or comma-separate. "
            "Default: those the group has offsets on.",
            show_default=False,
        ),
    ] = None,
    target_url: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="A sample target's database: its stored offsets move too (the sample "
            "consumers resume from those).",
            show_default=False,
        ),
    ] = None,
    execute: Annotated[
        bool, typer.Option(help="Move the offsets. Without it: a dry run that prints the plan.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Skip the check for active members. Kafka itself still refuses to move "
            "a group whose members are alive; then nothing moves."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Move a consumer group's offsets to a time, the earliest offsets or given offsets.

    A dry run unless --execute: it prints, per topic and partition, the current and the
    new offset. It refuses while the group has active members unless --force.
    """
    from consumers.replay import (
        ReplaySpec,
        execute_replay,
        parse_duration,
        plan_replay,
        read_offsets_file,
    )
    from queuestream.cli.render_replay import print_replay_plan
    from queuestream.databases import parse_url

    settings = command_settings()
    if target_url is not None:
        parse_url(target_url)  # a bad URL stops before the broker is asked
    moment = (
        None
        if to_datetime is None
        else parse_time(to_datetime, None, "--to-datetime", kafka_time=True)
    )
    spec = ReplaySpec(
        to_datetime=moment,
        by_duration=None if by_duration is None else parse_duration(by_duration),
        to_earliest=to_earliest,
        to_offsets=None if to_offsets is None else read_offsets_file(to_offsets),
    )
    names = [t.strip() for item in topics or [] for t in item.split(",") if t.strip()]
    plan = plan_replay(settings, group, spec, topics=names or None, target_url=target_url)
    if execute:
        plan = execute_replay(settings, plan, force=force)
    print_replay_plan(plan, settings, as_json)


def rebuild(
    target: TargetArg,
    target_url: Annotated[
        str,
        typer.Option("--target", help="A NEW, empty database to build.", show_default=False),
    ],
    as_of: Annotated[str, typer.Option(help=f"The point in time. {TIME_HELP}")],
    max_errors: MaxErrorsOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes sharing the partitions, each about 200 MB and a database "
            "connection, each with its own --max-errors (as the members of a consumer "
            "group). Default: one per core (at most 8), one per 25,000 offsets to read, at "
            "most one per partition; a SQLite target takes one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build a fresh target as it was at a point in time, from the earliest offsets.

    Applies every refresh whose END marker was written at or before --as-of, then
    stops. The new target keeps its offsets: `consume --target NEW_URL` later goes on
    from there.
    """
    from consumers.rebuild import plan_rebuild, workers_for
    from consumers.rebuild import rebuild as run_rebuild
    from queuestream.databases import describe_url

    settings = command_settings(target_url=target_url, max_errors=max_errors)
    moment = parse_time(as_of, None, "--as-of", kafka_time=True)
    if moment > datetime.now(UTC):
        err_console.print(
            f"note: --as-of {moment.isoformat()} is in the future: the rebuild stops at what "
            "is committed now"
        )
    plan = plan_rebuild(settings, target, moment)
    count = workers_for(plan, workers)
    stop = threading.Event()
    on_stop_signals(stop.set, "stopping the rebuild after the batch in hand")
    console.print(
        f"rebuilding {target} as of {moment.isoformat()} into {describe_url(plan.target_url)}: "
        f"{plan.events} offsets to read, {count} {'process' if count == 1 else 'processes'}",
        highlight=False,
    )
    with progress_bar() as bar:
        task = bar.add_task("offsets read", total=plan.events)

        def _batch(outcome: BatchOutcome) -> None:
            read = sum(
                last - first + 1
                for entry in outcome.entries
                for spans in entry.offsets.values()
                for first, last in spans.values()
            )
            bar.advance(task, read)

        stats = run_rebuild(settings, plan, workers=count, on_batch=_batch, stop=stop)
    if stop.is_set():
        err_console.print(
            f"stopped before the end: {describe_url(plan.target_url)} holds part of the "
            "rebuild; rebuild into a new, empty database"
        )
        raise typer.Exit(1)
    console.print(
        f"{target} as of {moment.isoformat()}: {stats.refreshes} refreshes, "
        f"synchronized {stats.rows} rows, {stats.errors} errors ({stats.seconds:.1f}s)",
        highlight=False,
    )
