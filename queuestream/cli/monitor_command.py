"""``queuestream monitor``: topics, groups and lag, once, live in the terminal or as a web page.

The command only chooses the mode and wires the pieces of :mod:`queuestream.monitor`
(collector, feed, terminal view, web server); they draw the view themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from queuestream.cli.options import check_above, check_at_least, command_settings
from queuestream.cli.output import console, err_console, print_json
from queuestream.cli.signals import on_stop_signals
from queuestream.errors import ConfigurationError

__all__ = ["monitor"]


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
        typer.Option(
            help="Exit 2 when a group's lag is over --max-lag / --max-lag-seconds, or a "
            "producer is stuck on a row that cannot be encoded."
        ),
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
    http_token_file: Annotated[
        Path | None,
        typer.Option(
            help="With --http: a file holding a token (16+ characters) that the page and "
            "/snapshot.json then require (Authorization: Bearer, or ?token= once in a browser).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Topics, consumer groups and their lag, the last batch, dead letters: live.

    --check exits 2 naming each group and partition over the limits, and each producer
    stuck on a row that cannot be encoded.
    """
    from queuestream.monitor import LagLimits, SnapshotCollector, SnapshotFeed, breaches
    from queuestream.monitor.access import read_token_file
    from queuestream.monitor.terminal import live, render
    from queuestream.monitor.web import MonitorServer, parse_address

    check_above(interval, 0, "--interval")
    check_at_least(max_lag, 0, "--max-lag")
    check_at_least(max_lag_seconds, 0, "--max-lag-seconds")
    if http_token_file is not None and http is None:
        msg = "--http-token-file protects the web page: give --http HOST:PORT too"
        raise ConfigurationError(msg)
    address = parse_address(http) if http is not None else None
    token = read_token_file(http_token_file) if http_token_file is not None else None
    settings = command_settings()
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
            print_json(snapshot.as_dict())
        elif not check:
            console.print(render(snapshot, limits))
        if check:
            out = err_console if as_json else console
            found = breaches(snapshot, limits, groups)
            for breach in found:
                out.print(f"LAG {breach.describe()}", highlight=False)
            for stuck in snapshot.stuck_producers:
                out.print(f"STUCK {stuck.describe()}", highlight=False)
            if found or snapshot.stuck_producers:
                raise typer.Exit(2)
            out.print(f"ok: {len(snapshot.groups)} consumer groups within the limits")
        return
    feed = SnapshotFeed(lambda: SnapshotCollector(settings, groups=groups), interval)
    stop = threading.Event()
    on_stop_signals(stop.set, "stopping the monitor")
    server = None
    feed.start()
    try:
        if address is not None:
            server = MonitorServer(address, feed, limits, interval, token=token).start()
            err_console.print(f"monitor page at {server.url}", highlight=False)
        if http is None or console.is_terminal:
            live(feed, console, limits, stop)
        else:
            stop.wait()
    finally:
        if server is not None:
            server.stop()
        feed.stop()
