"""The monitor's HTML page: one snapshot, server-rendered, every value escaped.

:func:`render_page` draws the feed's latest state: the last batch, the
producers' status (a row that stops the feed shows here), consumer groups and
their lag, topics and dead letters. No script: the page reloads itself with a
meta refresh. :mod:`queuestream.monitor.web` serves it.
"""

from __future__ import annotations

from html import escape

from queuestream.monitor._text import (
    age,
    batch_counts,
    group_topic_rows,
    moment,
    partition_offsets,
)
from queuestream.monitor.alerts import LagLimits
from queuestream.monitor.feed import FeedState
from queuestream.monitor.snapshot import Snapshot

__all__ = ["render_page"]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1f24; background: #fafbfc; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td.lag { color: #1a7f37; } tr.lagging td.lag { color: #9a6700; }
tr.over td.lag { color: #cf222e; font-weight: bold; }
.error { color: #cf222e; font-weight: bold; } .muted { color: #57606a; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; margin: 0; }
dt { font-weight: bold; } dd { margin: 0; }
"""


def _cell(value: object, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{escape(str(value))}</td>"


def _last_batch(snapshot: Snapshot) -> str:
    batch = snapshot.last_batch
    if batch is None:
        return '<p class="muted">No batch committed yet.</p>'
    watermark = (
        "-"
        if batch.watermark is None
        else f"{batch.watermark:%Y-%m-%d %H:%M:%S} UTC ({age(batch.watermark_age_seconds)} old)"
    )
    rows = [
        ("refresh", batch.refresh_id, "refresh-id"),
        ("committed", moment(batch.committed_at, snapshot.taken_at), "committed-at"),
        ("producer", f"{batch.producer} ({batch.mode})", "producer"),
        ("events", f"{batch.event_count}: {batch_counts(batch.counts)}", "batch-counts"),
        ("watermark", watermark, "watermark"),
    ]
    return (
        "<dl>"
        + "".join(f'<dt>{escape(k)}</dt><dd id="{i}">{escape(v)}</dd>' for k, v, i in rows)
        + "</dl>"
    )


def _groups(snapshot: Snapshot, limits: LagLimits) -> str:
    if not snapshot.groups:
        prefix = escape(snapshot.prefix)
        return f'<p class="muted">No consumer group has offsets on {prefix}.* topics.</p>'
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "group",
            "state",
            "members",
            "topic",
            "lag per partition (messages, time)",
            "lag (messages)",
            "lag (time)",
        )
    )
    body = []
    for row in group_topic_rows(snapshot, limits):
        css = "over" if row.over_limit else "lagging" if row.lag.lag_messages else "ok"
        group = row.group
        body.append(
            f'<tr class="{css}" data-group="{escape(group.name)}" data-topic="{escape(row.topic)}">'
            + _cell(group.name if row.first else "", "group")
            + _cell(group.state if row.first else "", "state")
            + _cell(group.members if row.first else "", "num")
            + _cell(row.topic, "topic")
            + "<td>"
            + "<br>".join(escape(p) for p in row.per_partition())
            + "</td>"
            + _cell(row.total(), "num lag lag-messages")
            + _cell(age(row.lag.lag_seconds), "num lag lag-seconds")
            + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _topics(snapshot: Snapshot) -> str:
    if not snapshot.topics:
        return f'<p class="muted">No {escape(snapshot.prefix)}.* topics yet.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "topic",
            "role",
            "partitions",
            "end offsets",
            "messages/s (last minute)",
            "oldest retained offsets",
            "oldest retained message",
        )
    )
    body = "".join(
        f'<tr data-topic="{escape(t.name)}">'
        + _cell(t.name)
        + _cell(t.role)
        + _cell(len(t.partitions), "num")
        + _cell(partition_offsets(t, "end"))
        + _cell(f"{t.rate_per_second:.1f}", "num")
        + _cell(partition_offsets(t, "earliest"))
        + _cell(moment(t.oldest_time, snapshot.taken_at))
        + "</tr>"
        for t in snapshot.topics
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dead_letters(snapshot: Snapshot) -> str:
    if not snapshot.dead_letters:
        return '<p class="muted">None: no dead-letter topic exists.</p>'
    body = "".join(
        f'<tr class="{"over" if d.depth else "ok"}">'
        + _cell(d.topic)
        + _cell(d.depth, "num lag")
        + "</tr>"
        for d in snapshot.dead_letters
    )
    return (
        f"<table><thead><tr><th>topic</th><th>depth</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _producers(snapshot: Snapshot) -> str:
    if not snapshot.producers:
        return '<p class="muted">No producer has reported its status yet.</p>'
    body = "".join(
        f'<tr class="{"over" if p.state == "stuck" else "ok"}">'
        + _cell(p.producer)
        + _cell(p.state, "lag")
        + _cell(moment(p.since, snapshot.taken_at))
        + _cell(p.row)
        + _cell(p.last_sweep)
        + "</tr>"
        for p in snapshot.producers
    )
    head = (
        "<th>producer</th><th>state</th><th>since</th><th>row that stops the feed</th>"
        "<th>last sweep</th>"
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_page(state: FeedState, limits: LagLimits, refresh_seconds: float) -> str:
    """The whole HTML page of the feed's state."""
    snapshot = state.snapshot
    refresh = max(1, round(refresh_seconds))
    title = "queuestream monitor" + (f" · {snapshot.prefix}" if snapshot else "")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        "<header><h1>queuestream monitor</h1>",
    ]
    if snapshot is None:
        parts.append('<p id="summary">Waiting for the first snapshot…</p>')
    else:
        parts.append(
            f'<p id="summary">prefix <b>{escape(snapshot.prefix)}</b> · Kafka '
            f"{escape(snapshot.bootstrap_servers)} · snapshot of "
            f'<span id="taken-at">{snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC</span> · '
            f"this page reloads every {refresh} s</p>"
        )
    if state.error:
        parts.append(f'<p id="error" class="error">{escape(state.error)}</p>')
    parts.append("</header>")
    if snapshot is not None:
        parts += [
            f'<section id="last-batch"><h2>Last batch</h2>{_last_batch(snapshot)}</section>',
            f'<section id="producers"><h2>Producers</h2>{_producers(snapshot)}</section>',
            f'<section id="groups"><h2>Consumer groups</h2>{_groups(snapshot, limits)}</section>',
            f'<section id="topics"><h2>Topics</h2>{_topics(snapshot)}</section>',
            f'<section id="dead-letters"><h2>Dead letters</h2>{_dead_letters(snapshot)}</section>',
        ]
    parts.append('<footer class="muted"><a href="/snapshot.json">snapshot.json</a></footer>')
    parts.append("</body></html>")
    return "\n".join(parts)
