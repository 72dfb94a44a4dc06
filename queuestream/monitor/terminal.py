"""The monitor in a terminal: rich tables of one snapshot, live or printed once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from queuestream.monitor._text import (
    age,
    batch_counts,
    group_topic_rows,
    moment,
    partition_list,
)
from queuestream.monitor.alerts import LagLimits
from queuestream.monitor.feed import FeedState, SnapshotFeed
from queuestream.monitor.snapshot import Snapshot

__all__ = ["live", "render"]


def _header(snapshot: Snapshot | None, error: str | None) -> RenderableType:
    lines = Text()
    if snapshot is not None:
        lines.append("queuestream monitor", style="bold")
        lines.append(
            f" · prefix {snapshot.prefix} · {snapshot.bootstrap_servers} · "
            f"{snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    else:
        lines.append("queuestream monitor: waiting for the first snapshot", style="bold")
    if error:
        lines.append(f"\n{error}", style="bold red")
    return lines


def _ago(value: datetime | None, snapshot: Snapshot) -> str:
    return "-" if value is None else f"{age((snapshot.taken_at - value).total_seconds())} ago"


def _last_batch(snapshot: Snapshot) -> RenderableType:
    batch = snapshot.last_batch
    if batch is None:
        return Text("Last batch: none committed yet", style="yellow")
    table = Table(title="Last batch", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("refresh", batch.refresh_id)
    table.add_row("committed", moment(batch.committed_at, snapshot.taken_at))
    table.add_row("producer", f"{batch.producer} ({batch.mode})")
    table.add_row("events", f"{batch.event_count}: {batch_counts(batch.counts)}")
    watermark = (
        "-"
        if batch.watermark is None
        else f"{batch.watermark:%Y-%m-%d %H:%M:%S} UTC ({age(batch.watermark_age_seconds)} old)"
    )
    table.add_row("watermark", watermark)
    return table


def _groups(snapshot: Snapshot, limits: LagLimits) -> RenderableType:
    if not snapshot.groups:
        return Text(f"Consumer groups: none with offsets on {snapshot.prefix}.*", style="yellow")
    tables: list[RenderableType] = []
    table: Table | None = None
    for row in group_topic_rows(snapshot, limits):
        group = row.group
        if row.first:
            table = Table(
                title=f"Consumer group {group.name} ({group.state}, {group.members} members)",
                title_justify="left",
            )
            table.add_column("topic", no_wrap=True)
            table.add_column("lag per partition: messages (time)")
            table.add_column("lag (messages)", justify="right")
            table.add_column("lag (time)", justify="right")
            tables.append(table)
        assert table is not None
        style = "bold red" if row.over_limit else ("yellow" if row.lag.lag_messages else "green")
        table.add_row(
            row.topic,
            partition_list(row.per_partition()),
            Text(row.total(), style=style),
            Text(age(row.lag.lag_seconds), style=style),
        )
    return Group(*tables)


def _topics(snapshot: Snapshot) -> RenderableType:
    if not snapshot.topics:
        return Text(f"Topics: none named {snapshot.prefix}.* yet", style="yellow")
    table = Table(title="Topics", title_justify="left")
    table.add_column("topic", no_wrap=True)
    table.add_column("parts", justify="right")
    table.add_column("end offsets")
    table.add_column("msgs/s", justify="right")
    table.add_column("oldest offsets")
    table.add_column("oldest message")
    for topic in snapshot.topics:
        table.add_row(
            topic.name,
            str(len(topic.partitions)),
            " ".join(str(p.end) for p in topic.partitions),
            f"{topic.rate_per_second:.1f}",
            " ".join(str(p.earliest) for p in topic.partitions),
            _ago(topic.oldest_time, snapshot),
        )
    return table


def _dead_letters(snapshot: Snapshot) -> RenderableType:
    if not snapshot.dead_letters:
        return Text("Dead letters: none (no .dlq topics)", style="green")
    table = Table(title="Dead letters", title_justify="left")
    table.add_column("topic", no_wrap=True)
    table.add_column("depth", justify="right")
    for letters in snapshot.dead_letters:
        table.add_row(
            letters.topic, Text(str(letters.depth), style="bold red" if letters.depth else "")
        )
    return table


def _producers(snapshot: Snapshot) -> RenderableType:
    if not snapshot.producers:
        return Text("Producers: none has reported its status yet", style="yellow")
    table = Table(title="Producers", title_justify="left")
    table.add_column("producer", no_wrap=True)
    table.add_column("state")
    table.add_column("since")
    notes: list[RenderableType] = []
    for p in snapshot.producers:
        stuck = p.state == "stuck"
        table.add_row(
            p.producer,
            Text(p.state, style="bold red" if stuck else "green"),
            moment(p.since, snapshot.taken_at),
        )
        if stuck:
            notes.append(Text(f"  {p.producer} is stuck on {p.row}", style="red"))
        if p.last_sweep:
            notes.append(Text(f"  {p.producer}: last sweep {p.last_sweep}"))
    return Group(table, *notes)


def render(
    snapshot: Snapshot | None, limits: LagLimits | None = None, error: str | None = None
) -> RenderableType:
    """The whole view of one snapshot (lag over ``limits`` in red)."""
    parts: list[RenderableType] = [_header(snapshot, error)]
    if snapshot is not None:
        limits = limits or LagLimits()
        parts += [
            _last_batch(snapshot),
            _producers(snapshot),
            _groups(snapshot, limits),
            _topics(snapshot),
            _dead_letters(snapshot),
        ]
    return Group(*parts)


def live(feed: SnapshotFeed, console: Console, limits: LagLimits, stop: threading.Event) -> None:
    """Show the feed's snapshots as they come, until ``stop`` is set: redrawn in place on
    a terminal; elsewhere (a file, a pipe, a service's log), where rich's Live draws
    nothing until it ends, each printed below the last as it comes."""
    state = feed.current()
    if console.is_terminal:
        with Live(
            render(state.snapshot, limits, state.error),
            console=console,
            auto_refresh=False,
            screen=False,
            transient=False,
        ) as view:
            _follow(feed, state, stop, lambda view_of: view.update(view_of, refresh=True), limits)
        return

    def below(view_of: RenderableType) -> None:
        console.print(view_of)
        console.file.flush()

    below(render(state.snapshot, limits, state.error))
    _follow(feed, state, stop, below, limits)


def _follow(
    feed: SnapshotFeed,
    state: FeedState,
    stop: threading.Event,
    show: Callable[[RenderableType], None],
    limits: LagLimits,
) -> None:
    """``show`` the view of each snapshot after ``state`` as it comes, until ``stop``."""
    while not stop.is_set():
        new = feed.wait_for_update(state.version, timeout=0.5)
        if new.version != state.version:
            state = new
            show(render(state.snapshot, limits, state.error))
