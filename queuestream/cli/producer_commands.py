"""The source side's commands: ``sim`` fills a sync database, ``refresh`` and ``produce`` publish.

Each command parses its options, builds the settings and calls the library; what
it prints is drawn by :mod:`queuestream.cli.render_refresh`. Library modules are
imported inside the commands so that ``queuestream --help`` starts at once.
"""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from queuestream.cli.options import (
    MetricsPortOpt,
    check_above,
    check_at_least,
    command_settings,
    parse_since,
)
from queuestream.cli.output import console, progress_bar
from queuestream.cli.signals import on_stop_signals
from queuestream.errors import ConfigurationError

__all__ = ["produce", "refresh", "sim", "sweep"]


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
    deletes: Annotated[
        bool,
        typer.Option(
            help="Delete rows too, as an order system does (a line from an open order, a "
            "mistaken payment, an unpaid order, a customer without orders): all but the "
            "first reach consumers only through a sweep (sweep, produce --sweep-every)."
        ),
    ] = False,
    id_stride: Annotated[
        int,
        typer.Option(
            help="Simulators writing this source at once: run each with its own --id-offset; "
            "each allocates every id-stride-th id and touches only its own customers and orders."
        ),
    ] = 1,
    id_offset: Annotated[
        int, typer.Option(help="This simulator's share of the ids, 0 to id-stride - 1.")
    ] = 0,
) -> None:
    """Generate customers, orders, payments, shipping and cancellations in the sync database."""
    from producer.simulator import Simulator
    from queuestream.databases import create_engine, retriable_outages

    check_at_least(actions, 0, "--actions")
    check_above(rate, 0, "--rate")
    check_at_least(per_transaction, 1, "--per-transaction")
    check_at_least(id_stride, 1, "--id-stride")
    check_at_least(id_offset, 0, "--id-offset")
    if id_offset >= id_stride:
        msg = f"--id-offset {id_offset}: give 0 to --id-stride - 1 ({id_stride - 1})"
        raise ConfigurationError(msg)
    settings = command_settings()
    engine = create_engine(settings.source_url, writer=True)
    with retriable_outages(engine):  # a failure names the sync database
        simulator = Simulator(
            engine, settings.zone, seed=seed, deletes=deletes, stride=id_stride, offset=id_offset
        )
        if with_queue_procedure:
            from producer.queue_procedure import install_queue_procedure

            install_queue_procedure(engine, settings.queue_schema)
        with progress_bar() as bar:
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


def refresh(
    since: Annotated[
        str | None, typer.Option(help="Re-sync everything changed since this date, once.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run one refresh: freeze the changes, publish them in one Kafka transaction."""
    from producer.refresh import Refresher
    from queuestream.cli.render_refresh import print_refresh_results

    settings = command_settings()
    start = parse_since(since, settings)  # a bad date stops before anything connects
    refresher = Refresher(settings)
    try:
        results = refresher.refresh(start)
    finally:
        refresher.close()
    print_refresh_results(results, as_json)


def produce(
    interval: Annotated[
        float,
        typer.Option(
            help="Seconds from the start of one refresh to the start of the next (at once "
            "when a refresh takes longer)."
        ),
    ] = 10.0,
    since: Annotated[
        str | None, typer.Option(help="Start date for the first refresh only.")
    ] = None,
    max_refreshes: Annotated[
        int | None,
        typer.Option(help="Stop after this many refreshes (default: run until stopped)."),
    ] = None,
    metrics_port: MetricsPortOpt = None,
    sweep_every: Annotated[
        str | None,
        typer.Option(
            help="Sweep the source between refreshes, a pass every DURATION (e.g. 1h, 30m, "
            "PT6H): deletes, rows stamped in the past, changes without a new ModifiedDate. "
            "Throttled by sweep_max_rows_per_second; refreshes keep their interval.",
            show_default=False,
        ),
    ] = None,
    max_errors: Annotated[
        int | None,
        typer.Option(
            help="Continue on the first N rows that cannot be encoded (each to <topic>.dlq, "
            "as JSON after masking, the reason in headers); past them, or without a budget, "
            "produce waits for the row to be fixed in the source, retrying. Default 0.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Refresh every INTERVAL seconds. SIGTERM finishes the refresh in hand and exits."""
    from producer.metrics import ProducerMetrics
    from producer.produce_loop import ProduceLoop
    from producer.refresh import Refresher
    from queuestream.metrics import metrics_server

    check_at_least(interval, 0, "--interval")  # 0: each refresh at once after the last
    check_at_least(max_refreshes, 1, "--max-refreshes")
    settings = command_settings(metrics_port=metrics_port, max_errors=max_errors)
    start = parse_since(since, settings)  # a bad date stops before anything connects
    every = None
    if sweep_every is not None:
        from consumers.replay_inputs import parse_duration

        every = parse_duration(sweep_every, "--sweep-every").total_seconds()
        if settings.refresh_mode != "watermark":
            msg = "--sweep-every: the sweep runs in watermark mode only (refresh_mode)"
            raise ConfigurationError(msg)
    metrics = ProducerMetrics()
    stop = threading.Event()  # SIGTERM: also ends a refresher's wait for a broker that is down
    loop = ProduceLoop(
        lambda: Refresher(settings, stop=stop),
        interval,
        backoff=settings.backoff,
        observer=metrics,
        sweep_every=every,
        stop=stop,
    )

    on_stop_signals(loop.stop, "finishing the refresh in hand")
    with metrics_server(metrics.registry, settings.metrics_port, settings.metrics_host):
        done = loop.run(start, max_refreshes)
    console.print(f"stopped after {done} refreshes")


def sweep(
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--tables",
            help="Only these tables (repeatable, or comma-separated: orders,order_details).",
            show_default=False,
        ),
    ] = None,
    chunk: Annotated[
        int | None, typer.Option(help="Rows compared per step (sweep_chunk).", show_default=False)
    ] = None,
    max_rows_per_second: Annotated[
        float | None,
        typer.Option(
            help="Read the source no faster than this (sweep_max_rows_per_second).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """One sweep pass: publish deletes, rows stamped in the past and changes made without
    a new ModifiedDate, comparing the source with what was published. Resumes an unfinished
    pass. Takes the producer's transactional id: run it while produce is stopped, or use
    produce --sweep-every."""
    from producer.refresh import Refresher
    from producer.sweep import Sweeper
    from queuestream.cli.render_refresh import print_sweep_report
    from queuestream.tables import TABLES_BY_NAME

    check_at_least(chunk, 1, "--chunk")
    check_above(max_rows_per_second, 0, "--max-rows-per-second")
    settings = command_settings()
    named = [t.strip() for arg in tables or () for t in arg.split(",") if t.strip()]
    unknown = sorted(set(named) - set(TABLES_BY_NAME))
    if unknown:  # before anything connects
        msg = f"--tables: no table {', '.join(unknown)}; choose from {', '.join(TABLES_BY_NAME)}"
        raise ConfigurationError(msg)
    # A sweep reads in key order in its own snapshots: no row reader to start.
    refresher = Refresher(settings.model_copy(update={"reader_process": False}))
    try:
        sweeper = Sweeper(refresher, named or None, chunk, max_rows_per_second)
        with progress_bar() as bar:
            task = bar.add_task("sweeping", total=None)
            report = sweeper.run_pass(
                lambda step: bar.update(
                    task, advance=step.rows, description=f"sweeping {step.table}"
                )
            )
    finally:
        refresher.close()
    print_sweep_report(report, as_json)
