"""The source side's commands: ``sim`` fills a sync database, ``refresh`` and ``produce`` publish.

Each command parses its options, builds the settings and calls the library; what
it prints is drawn by :mod:`queuestream.cli.render_refresh`. Library modules are
imported inside the commands so that ``queuestream --help`` starts at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from queuestream.cli.options import MetricsPortOpt, command_settings, parse_since
from queuestream.cli.output import console, progress_bar
from queuestream.cli.signals import on_stop_signals

__all__ = ["produce", "refresh", "sim"]


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

    settings = command_settings()
    engine = create_engine(settings.source_url, writer=True)
    simulator = Simulator(engine, settings.zone, seed=seed)
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
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 10.0,
    since: Annotated[
        str | None, typer.Option(help="Start date for the first refresh only.")
    ] = None,
    max_refreshes: Annotated[
        int | None,
        typer.Option(help="Stop after this many refreshes (default: run until stopped)."),
    ] = None,
    metrics_port: MetricsPortOpt = None,
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

    settings = command_settings(metrics_port=metrics_port, max_errors=max_errors)
    start = parse_since(since, settings)  # a bad date stops before anything connects
    metrics = ProducerMetrics()
    loop = ProduceLoop(
        lambda: Refresher(settings),
        interval,
        backoff=settings.backoff,
        observer=metrics,
    )

    on_stop_signals(loop.stop, "finishing the refresh in hand")
    with metrics_server(metrics.registry, settings.metrics_port, settings.metrics_host):
        done = loop.run(start, max_refreshes)
    console.print(f"stopped after {done} refreshes")
