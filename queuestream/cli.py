"""The ``queuestream`` command. Thin: it parses flags, builds settings, calls the library.

Every queuestream error is printed as ``Type: message`` and exits 1; ``--traceback``
shows the traceback too.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from queuestream.errors import ConfigurationError, QueuestreamError
from queuestream.settings import Settings, load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="Change events from an Exigo-style sync database's queue snapshot to Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class _State:
    config: Path | None = None
    overrides: dict[str, Any] = {}  # noqa: RUF012
    traceback: bool = False


_state = _State()

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML settings file (also QUEUESTREAM_CONFIG).", show_default=False
    ),
]


@app.callback()
def _global(
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
    _state.config = config
    _state.traceback = traceback
    _state.overrides = {
        "source_url": source,
        "kafka_bootstrap_servers": bootstrap_servers,
        "topic_prefix": topic_prefix,
        "schema_registry_url": registry_url,
        "source_timezone": source_timezone,
    }


def _settings(**more: Any) -> Settings:
    return load_settings(_state.config, **{**_state.overrides, **more})


def _on_stop_signals(stop: Callable[[], None], doing: str) -> None:
    """SIGTERM and Ctrl-C call ``stop``: the command finishes what it holds, then exits."""

    def _handler(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info("signal %d: %s", signum, doing)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)


def _progress() -> Progress:
    """A progress bar on stderr, shown on a terminal only."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def _parse_time(text: str, zone: tzinfo | None, option: str) -> datetime:
    """An ISO date-time (or 1/1/2017 [08:00]); without a zone it is in ``zone`` (None: local)."""
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
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone) if zone is not None else value.astimezone()
    return value.astimezone(UTC)


def _parse_since(text: str | None, settings: Settings) -> datetime | None:
    """``--since``: a time in the source's zone (the one its ModifiedDate is stamped in)."""
    return None if text is None else _parse_time(text, settings.zone, "--since")


@app.command()
def sim(
    actions: Annotated[int, typer.Option(help="Business actions to perform.")] = 500,
    rate: Annotated[
        float | None, typer.Option(help="Actions per second (default: flat out).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same changes.")] = 42,
    per_transaction: Annotated[int, typer.Option(help="Actions per source transaction.")] = 1,
    with_queue_procedure: Annotated[
        bool, typer.Option(help="PostgreSQL: also install an Exigo-like queue.refresh procedure.")
    ] = False,
) -> None:
    """Generate customers, orders, payments, shipping and cancellations in the sync database."""
    from producer.simulator import Simulator
    from queuestream.databases import create_engine

    settings = _settings()
    engine = create_engine(settings.source_url, writer=True)
    simulator = Simulator(engine, settings.zone, seed=seed)
    if with_queue_procedure:
        from producer.queue_procedure import install_queue_procedure

        install_queue_procedure(engine, settings.queue_schema)
    with _progress() as bar:
        task = bar.add_task("simulating", total=actions)
        stats = simulator.run(
            actions,
            rate=rate,
            per_transaction=per_transaction,
            on_progress=lambda n: bar.advance(task, n),
        )
    engine.dispose()
    done = ", ".join(f"{n} {a.replace('_', ' ')}" for a, n in stats.actions.items() if n)
    console.print(f"simulated {stats.total} actions ({done}); {stats.rows_written} rows written")


def _print_results(results: list[Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in results]))
        return
    if not results:
        console.print("nothing to publish")
    for result in results:
        window = (
            f"{result.window_start:%Y-%m-%d %H:%M:%S} → {result.window_end:%Y-%m-%d %H:%M:%S} UTC"
            if result.window_start and result.window_end
            else "queue tables"
        )
        label = " (republished after a crash)" if result.recovered else ""
        console.print(
            f"refresh {result.refresh_id}{label}: {window}, {result.events} events "
            f"in {result.seconds:.2f}s"
        )
        for table, count in result.counts.items():
            ops = ", ".join(
                f"{k.split('.')[1]} {v}"
                for k, v in sorted(result.op_counts.items())
                if k.startswith(f"{table}.")
            )
            console.print(f"  {table:<18} {count:>8}" + (f"  ({ops})" if ops else ""))
        if result.overlap_skipped:
            console.print(f"  overlap duplicates skipped: {result.overlap_skipped}")


@app.command()
def refresh(
    since: Annotated[
        str | None, typer.Option(help="Re-sync everything changed since this date, once.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one refresh: freeze the changes, publish them in one Kafka transaction."""
    from producer.refresh import Refresher

    settings = _settings()
    refresher = Refresher(settings)
    try:
        results = refresher.refresh(_parse_since(since, settings))
    finally:
        refresher.close()
    _print_results(results, as_json)


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
        "(QUEUESTREAM_METRICS_PORT; the address is metrics_host). 0: none.",
        show_default=False,
    ),
]


@app.command()
def produce(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 10.0,
    since: Annotated[
        str | None, typer.Option(help="Start date for the first refresh only.")
    ] = None,
    max_refreshes: Annotated[
        int | None,
        typer.Option(help="Stop after this many refreshes (default: run until stopped)."),
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Refresh every INTERVAL seconds. SIGTERM finishes the refresh in hand and exits."""
    from producer.metrics import ProducerMetrics
    from producer.refresh import ProduceLoop, Refresher
    from queuestream.metrics import metrics_server

    settings = _settings(metrics_port=metrics_port)
    metrics = ProducerMetrics()
    loop = ProduceLoop(
        lambda: Refresher(settings),
        interval,
        backoff=settings.backoff,
        observer=metrics,
    )

    _on_stop_signals(loop.stop, "finishing the refresh in hand")
    with metrics_server(metrics.registry, settings.metrics_port, settings.metrics_host):
        done = loop.run(_parse_since(since, settings), max_refreshes)
    console.print(f"stopped after {done} refreshes")


@app.command()
def demo(
    actions: Annotated[int, typer.Option(help="Simulated actions before the refresh.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Simulate, refresh into Kafka, apply to both sample targets, verify them."""
    from queuestream.demo import run_demo

    run_demo(_settings(), actions=actions, seed=seed, console=console)


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


@app.command()
def consume(
    target: TargetArg,
    target_url: TargetUrlOpt = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Consumer group (default queuestream-<prefix>-<target>).", show_default=False
        ),
    ] = None,
    max_errors: MaxErrorsOpt = None,
    until_idle: Annotated[
        bool, typer.Option(help="Stop once everything committed so far is applied.")
    ] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Apply the change events to a target as a member of a consumer group.

    SIGTERM finishes the batch in hand, commits it and leaves the group.
    """
    from consumers import target_named
    from consumers.metrics import ConsumerMetrics
    from consumers.runtime import BatchOutcome, ConsumerRuntime
    from queuestream.metrics import metrics_server

    settings = _settings(
        target_url=target_url,
        consumer_group=group,
        max_errors=max_errors,
        metrics_port=metrics_port,
    )
    metrics = ConsumerMetrics(target)
    stop = threading.Event()
    _on_stop_signals(stop.set, "finishing the batch in hand")

    def _batch(outcome: BatchOutcome) -> None:
        for entry in outcome.entries:
            console.print(f"refresh {entry.refresh_id}: {entry.summary()}", highlight=False)

    runtime = ConsumerRuntime(
        settings,
        target_named(target),
        until_idle=until_idle,
        stop=stop,
        on_batch=_batch,
        metrics=metrics,
    )
    with metrics_server(metrics.registry, settings.metrics_port, settings.metrics_host):
        stats = runtime.run()
    console.print(
        f"{target}: {stats.refreshes} refreshes in {stats.batches} batches, "
        f"synchronized {stats.rows} rows, {stats.errors} errors, {stats.stale} stale events "
        f"({stats.seconds:.1f}s)",
        highlight=False,
    )


@app.command()
def verify(
    target: TargetArg,
    target_url: TargetUrlOpt = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Sync database URL.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Reconcile a target with the source: row counts, money sums, checksums.

    Exits 1 when anything differs.
    """
    from rich.table import Table

    from consumers.verify import verify as run_verify

    more: dict[str, Any] = {"target_url": target_url}
    if source is not None:
        more["source_url"] = source
    report = run_verify(_settings(**more), target)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        table = Table(title=f"{target}: target vs source")
        for column in (
            "table",
            "rows (target/source)",
            "sums (target/source)",
            "checksum",
            "result",
        ):
            table.add_column(column)
        for check in report.checks:
            sums = "; ".join(
                f"{name} {check.actual_sums.get(name)}/{value}"
                for name, value in check.expected_sums.items()
            )
            same = check.expected_checksum == check.actual_checksum
            table.add_row(
                check.table,
                f"{check.actual_rows}/{check.expected_rows}",
                sums or "-",
                check.actual_checksum
                if same
                else f"{check.actual_checksum} != {check.expected_checksum}",
                "[green]equal[/]" if check.ok else "[bold red]DIFFERENT[/]",
            )
        console.print(table)
        for check in report.checks:
            for label, keys in (
                ("missing in target", check.missing),
                ("not in source", check.unexpected),
                ("different", check.different),
            ):
                if keys:
                    console.print(
                        f"  {check.table}: {label}: {', '.join(map(str, keys))}", highlight=False
                    )
        console.print(
            f"{target}: [green]verified equal to the source[/]"
            if report.ok
            else f"{target}: [bold red]differs from the source[/]"
        )
    if not report.ok:
        raise typer.Exit(1)


TimeHelp = "ISO date-time; without a zone, this machine's local time (as kafka-consumer-groups)."


@app.command()
def replay(
    group: Annotated[str, typer.Option(help="The consumer group to move.", show_default=False)],
    to_datetime: Annotated[
        str | None, typer.Option(help=f"Move to the first event at or after this time. {TimeHelp}")
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

    settings = _settings()
    moment = None if to_datetime is None else _parse_time(to_datetime, None, "--to-datetime")
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
    if as_json:
        console.print_json(json.dumps(plan.as_dict()))
        return
    _print_replay(plan, settings)


def _print_replay(plan: Any, settings: Settings) -> None:
    from rich.table import Table

    from queuestream.databases import describe_url

    members = f", {len(plan.members)} active member(s)" if plan.members else ", no active members"
    table = Table(title=f"group {plan.group} ({plan.state}{members}) {plan.destination}")
    table.add_column("topic", no_wrap=True)
    for column in ("part", "group at"):
        table.add_column(column, justify="right")
    if plan.target_url is not None:
        table.add_column("target at", justify="right")
    for column in ("new", "change", "retained"):
        table.add_column(column, justify="right", no_wrap=True)
    for move in plan.moves:
        row = [
            move.topic,
            str(move.partition),
            "-" if move.group_offset is None else str(move.group_offset),
        ]
        if plan.target_url is not None:
            row.append("-" if move.target_offset is None else str(move.target_offset))
        delta = move.delta
        row += [
            str(move.new_offset),
            "-" if delta is None else f"{delta:+d}",
            f"{move.low}..{move.high}",
        ]
        table.add_row(*row)
    console.print(table)
    if plan.skipped:
        where = ", ".join(f"{t}[{p}] {n}" for (t, p), n in sorted(plan.skipped.items()))
        err_console.print(
            f"[bold yellow]warning[/]: moving forward skips {sum(plan.skipped.values())} "
            f"events that the group was not given yet ({where})",
            highlight=False,
        )
    where = f" (and those stored in {describe_url(plan.target_url)})" if plan.target_url else ""
    if plan.executed:
        console.print(f"moved {len(plan.moves)} partitions of group {plan.group}{where}")
    else:
        console.print(
            f"dry run: nothing moved. Add --execute to move the offsets of group "
            f"{plan.group}{where}."
        )
    if plan.target_url is None and any(
        plan.group == settings.group_for(name) for name in ("accounting", "shipping")
    ):
        err_console.print(
            f"note: {plan.group} is a sample target's group, which resumes from the offsets "
            "stored in its database: pass --target URL to move those too"
        )


@app.command()
def rebuild(
    target: TargetArg,
    target_url: Annotated[
        str,
        typer.Option("--target", help="A NEW, empty database to build.", show_default=False),
    ],
    as_of: Annotated[str, typer.Option(help=f"The point in time. {TimeHelp}")],
    max_errors: MaxErrorsOpt = None,
) -> None:
    """Build a fresh target as it was at a point in time, from the earliest offsets.

    Applies every refresh whose END marker was written at or before --as-of, then
    stops. The new target keeps its offsets: `consume --target NEW_URL` later goes on
    from there.
    """
    from consumers.rebuild import plan_rebuild
    from consumers.rebuild import rebuild as run_rebuild
    from consumers.runtime import BatchOutcome
    from queuestream.databases import describe_url

    settings = _settings(target_url=target_url, max_errors=max_errors)
    moment = _parse_time(as_of, None, "--as-of")
    if moment > datetime.now(UTC):
        err_console.print(
            f"note: --as-of {moment.isoformat()} is in the future: the rebuild stops at what "
            "is committed now"
        )
    plan = plan_rebuild(settings, target, moment)
    console.print(
        f"rebuilding {target} as of {moment.isoformat()} into {describe_url(plan.target_url)}: "
        f"{plan.events} offsets to read",
        highlight=False,
    )
    with _progress() as bar:
        task = bar.add_task("offsets read", total=plan.events)

        def _batch(outcome: BatchOutcome) -> None:
            read = sum(
                last - first + 1
                for entry in outcome.entries
                for spans in entry.offsets.values()
                for first, last in spans.values()
            )
            bar.advance(task, read)

        stats = run_rebuild(settings, plan, on_batch=_batch)
    console.print(
        f"{target} as of {moment.isoformat()}: {stats.refreshes} refreshes, "
        f"synchronized {stats.rows} rows, {stats.errors} errors ({stats.seconds:.1f}s)",
        highlight=False,
    )


@app.command()
def monitor(
    once: Annotated[bool, typer.Option(help="Print one snapshot and exit.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one snapshot as JSON (implies --once).")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between snapshots.")] = 5.0,
    group: Annotated[
        list[str] | None,
        typer.Option(help="Only this consumer group (repeatable).", show_default=False),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(help="Exit 2 when a group's lag is over --max-lag / --max-lag-seconds."),
    ] = False,
    max_lag: Annotated[
        int | None,
        typer.Option(help="Most messages a group may lag on a partition.", show_default=False),
    ] = None,
    max_lag_seconds: Annotated[
        float | None,
        typer.Option(
            help="Oldest a group's first unconsumed message may be, in seconds.",
            show_default=False,
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            help="Serve the view as a web page at HOST:PORT (e.g. 127.0.0.1:8080), "
            "with /snapshot.json.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Topics, consumer groups and their lag, the last batch, dead letters: live.

    --check exits 2 naming each group and partition over the limits.
    """
    from queuestream.monitor import LagLimits, SnapshotCollector, SnapshotFeed, breaches
    from queuestream.monitor.terminal import live, render
    from queuestream.monitor.web import MonitorServer, parse_address

    settings = _settings()
    groups = tuple(group or ())
    limits = LagLimits(max_lag, max_lag_seconds)
    if check and limits.empty:
        msg = "--check needs a limit: --max-lag N and/or --max-lag-seconds S"
        raise ConfigurationError(msg)
    if once or as_json or check:
        collector = SnapshotCollector(settings, groups=groups)
        try:
            snapshot = collector.collect()
        finally:
            collector.close()
        if as_json:
            console.print_json(json.dumps(snapshot.as_dict()))
        elif not check:
            console.print(render(snapshot, limits))
        if check:
            out = err_console if as_json else console
            found = breaches(snapshot, limits, groups)
            for breach in found:
                out.print(f"LAG {breach.describe()}", highlight=False)
            if found:
                raise typer.Exit(2)
            out.print(f"ok: {len(snapshot.groups)} consumer groups within the limits")
        return
    feed = SnapshotFeed(lambda: SnapshotCollector(settings, groups=groups), interval)
    stop = threading.Event()
    _on_stop_signals(stop.set, "stopping the monitor")
    server = None
    feed.start()
    try:
        if http is not None:
            server = MonitorServer(parse_address(http), feed, limits, interval).start()
            err_console.print(f"monitor page at {server.url}", highlight=False)
        if http is None or console.is_terminal:
            live(feed, console, limits, stop)
        else:
            stop.wait()
    finally:
        if server is not None:
            server.stop()
        feed.stop()


def main() -> None:
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except QueuestreamError as exc:
        if _state.traceback:
            err_console.print_exception()
        err_console.print(f"[bold red]{type(exc).__name__}[/]: {exc}", highlight=False)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(int(getattr(exc, "exit_code", 2)))


if __name__ == "__main__":
    main()
