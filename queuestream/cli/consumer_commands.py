"""The target side's commands: ``consume`` applies the change events, ``verify`` reconciles.

Each command parses its options, builds the settings and calls the library; the
reconciliation is drawn by :mod:`queuestream.cli.render_verify`. Library modules
are imported inside the commands so that ``queuestream --help`` starts at once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from queuestream.cli.options import (
    MaxErrorsOpt,
    MetricsPortOpt,
    TargetArg,
    TargetUrlOpt,
    command_settings,
)
from queuestream.cli.output import console
from queuestream.cli.signals import on_stop_signals

if TYPE_CHECKING:
    from consumers.batch_apply import BatchOutcome

__all__ = ["consume", "verify"]


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

    SIGTERM finishes the batch in hand, commits it and leaves the group; a refresh too big
    to hold, being applied in parts, is rolled back instead and read again on the next start.
    """
    from consumers import target_named
    from consumers.metrics import ConsumerMetrics
    from consumers.runtime import ConsumerRuntime
    from queuestream.metrics import metrics_server

    settings = command_settings(
        target_url=target_url,
        consumer_group=group,
        max_errors=max_errors,
        metrics_port=metrics_port,
    )
    metrics = ConsumerMetrics(target)
    stop = threading.Event()
    on_stop_signals(stop.set, "finishing the batch in hand")

    def _batch(outcome: BatchOutcome) -> None:
        for entry in outcome.entries:
            console.print(f"{entry.heading()}: {entry.summary()}", highlight=False)

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
    from consumers.verify import verify as run_verify
    from queuestream.cli.render_verify import print_reconciliation

    more: dict[str, Any] = {"target_url": target_url}
    if source is not None:
        more["source_url"] = source
    report = run_verify(command_settings(**more), target)
    print_reconciliation(target, report, as_json)
    if not report.ok:
        raise typer.Exit(1)
