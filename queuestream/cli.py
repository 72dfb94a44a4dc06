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
from datetime import UTC, datetime
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


def _parse_since(text: str | None, settings: Settings) -> datetime | None:
    if text is None:
        return None
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
            msg = f"--since {text!r} is not a date: use 2017-01-01, 2017-01-01T08:00 or 1/1/2017"
            raise ConfigurationError(msg) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=settings.zone)
    return value.astimezone(UTC)


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
    from queuestream.databases import create_engine
    from queuestream.producer.simulator import Simulator

    settings = _settings()
    engine = create_engine(settings.source_url, writer=True)
    simulator = Simulator(engine, settings.zone, seed=seed)
    if with_queue_procedure:
        from queuestream.producer.queue_procedure import install_queue_procedure

        install_queue_procedure(engine, settings.queue_schema)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
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
    from queuestream.producer.refresh import Refresher

    settings = _settings()
    refresher = Refresher(settings)
    try:
        results = refresher.refresh(_parse_since(since, settings))
    finally:
        refresher.close()
    _print_results(results, as_json)


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
) -> None:
    """Refresh every INTERVAL seconds. SIGTERM finishes the refresh in hand and exits."""
    from queuestream.producer.refresh import ProduceLoop, Refresher

    settings = _settings()
    loop = ProduceLoop(
        lambda: Refresher(settings), interval, backoff=settings.retry_backoff_seconds
    )

    _on_stop_signals(loop.stop, "finishing the refresh in hand")
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
    max_errors: Annotated[
        int | None,
        typer.Option(
            help="Continue on the first N events that cannot be applied (to <topic>.dlq); "
            "one more stops the consumer. Default 0.",
            show_default=False,
        ),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option(help="Stop once everything committed so far is applied.")
    ] = False,
) -> None:
    """Apply the change events to a target as a member of a consumer group.

    SIGTERM finishes the batch in hand, commits it and leaves the group.
    """
    from queuestream.consumers import target_named
    from queuestream.consumers.runtime import BatchOutcome, ConsumerRuntime

    settings = _settings(target_url=target_url, consumer_group=group, max_errors=max_errors)
    stop = threading.Event()
    _on_stop_signals(stop.set, "finishing the batch in hand")

    def _batch(outcome: BatchOutcome) -> None:
        for entry in outcome.entries:
            console.print(f"refresh {entry.refresh_id}: {entry.summary()}", highlight=False)

    runtime = ConsumerRuntime(
        settings, target_named(target), until_idle=until_idle, stop=stop, on_batch=_batch
    )
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

    from queuestream.consumers.verify import verify as run_verify

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
