"""The monitor's lag and rate logic and its two views, on hand-made snapshots (no Kafka)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from queuestream.errors import ConfigurationError
from queuestream.kafka_reading import Unconsumed, UnconsumedTally
from queuestream.monitor.alerts import LagLimits, breaches
from queuestream.monitor.feed import STOP_WAIT_SECONDS, FeedState, SnapshotFeed
from queuestream.monitor.lag import partition_lag
from queuestream.monitor.snapshot import (
    GroupInfo,
    LastBatch,
    PartitionInfo,
    PartitionLag,
    Snapshot,
    TopicInfo,
)
from queuestream.monitor.terminal import render
from queuestream.monitor.topics import messages_since
from queuestream.monitor.web import MonitorServer, parse_address, render_page
from queuestream.producer_status import ProducerStatus
from tests.helpers import wait_for
from tests.services import free_ports

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
GROUP = "queuestream-exigo-accounting"


# --- lag ---------------------------------------------------------------------------


def test_caught_up_group_behind_a_commit_marker_has_no_lag() -> None:
    # committed 41, log end 42: offset 41 is the refresh's commit marker, which a
    # read_committed reader never gets, so it found nothing before the end.
    tally = UnconsumedTally(start=41, stable_end=42)
    tally.at_end()
    lag = partition_lag("exigo.orders", 0, 41, 42, tally.result(), NOW_MS)
    assert (lag.lag_messages, lag.lag_seconds, lag.exact) == (0, 0.0, True)
    assert partition_lag("exigo.orders", 0, 42, 42, None, NOW_MS).lag_messages == 0


def test_lag_counts_messages_and_ages_the_first_unconsumed_one() -> None:
    # Committed 41 (a marker), then a refresh wrote 3 events (42-44) and its marker (45).
    tally = UnconsumedTally(start=41, stable_end=46)
    first_ms = NOW_MS - 90_000
    for offset in (42, 43, 44):
        tally.add(offset, first_ms + (offset - 42))
    tally.at_end()
    unconsumed = tally.result()
    assert unconsumed == Unconsumed(3, 42, first_ms, exact=True)
    lag = partition_lag("exigo.orders", 2, 41, 46, unconsumed, NOW_MS)
    assert (lag.lag_messages, lag.lag_seconds, lag.first_unconsumed) == (3, 90.0, 42)
    # A stopped group: the same offsets a minute later lag a minute more.
    later = partition_lag("exigo.orders", 2, 41, 46, unconsumed, NOW_MS + 60_000)
    assert later.lag_messages == 3 and later.lag_seconds == 150.0


def test_lag_seconds_never_negative_with_a_clock_ahead() -> None:
    lag = partition_lag("t", 0, 0, 5, Unconsumed(2, 0, NOW_MS + 5_000), NOW_MS)
    assert lag.lag_seconds == 0.0


def test_tally_ignores_messages_committed_after_the_snapshot() -> None:
    tally = UnconsumedTally(start=0, stable_end=3)
    for offset in (0, 1, 2, 3, 4):  # 3 and 4 committed after the end was read
        tally.add(offset, NOW_MS)
    assert tally.done
    assert tally.result().count == 3


def test_tally_estimates_past_its_limit_and_on_timeout() -> None:
    tally = UnconsumedTally(start=100, stable_end=1_000, limit=10)
    for offset in range(100, 110):
        tally.add(offset, NOW_MS)
    assert tally.done
    result = tally.result()
    assert not result.exact and result.count == 10 + (1_000 - 110)
    assert result.first_offset == 100
    unread = UnconsumedTally(start=5, stable_end=20)  # the reader never got there
    result = unread.result()
    assert not result.exact and result.count == 15 and result.first_ms is None
    lag = partition_lag("t", 0, 5, 20, result, NOW_MS)
    assert lag.lag_messages == 15 and lag.lag_seconds is None and not lag.exact


def test_tally_with_nothing_to_read_is_done() -> None:
    tally = UnconsumedTally(start=7, stable_end=7)
    assert tally.done and tally.result() == Unconsumed(0)


def test_rates_from_offsets_for_times() -> None:
    assert messages_since(end=500, offset_at_time=380) == 120
    assert messages_since(end=500, offset_at_time=-1) == 0  # nothing written since
    topic = TopicInfo(
        "exigo.orders",
        "changes",
        (
            PartitionInfo(0, 0, 500, 500, NOW - timedelta(hours=1), 120),
            PartitionInfo(1, 10, 70, 70, NOW - timedelta(hours=2), 60),
        ),
    )
    assert topic.rate_per_second == 3.0
    assert topic.retained == 560
    assert topic.oldest_time == NOW - timedelta(hours=2)


# --- limits ---------------------------------------------------------------------


def _snapshot(
    lag_messages: int = 5, lag_seconds: float | None = 42.0, name: str = GROUP
) -> Snapshot:
    orders = TopicInfo(
        "exigo.orders",
        "changes",
        (
            PartitionInfo(0, 0, 12, 12, NOW - timedelta(minutes=30), 4),
            PartitionInfo(1, 0, 30, 30, NOW - timedelta(minutes=30), 0),
        ),
    )
    dlq = TopicInfo("exigo.orders.dlq", "dead letters", (PartitionInfo(0, 0, 2, 2, NOW, 2),))
    lags = (
        PartitionLag("exigo.orders", 0, 11, 12, 0, 0.0),
        PartitionLag("exigo.orders", 1, 23, 30, lag_messages, lag_seconds, True, 24),
    )
    return Snapshot(
        taken_at=NOW,
        bootstrap_servers="127.0.0.1:9092",
        prefix="exigo",
        topics=(orders, dlq),
        groups=(GroupInfo(name, "stable", 2, lags),),
        last_batch=LastBatch(
            refresh_id="20260301T115900Z-abc",
            producer="queuestream-exigo",
            mode="watermark",
            committed_at=NOW - timedelta(seconds=61),
            event_count=9,
            counts={"orders": 7, "payments": 2},
            window_start=NOW - timedelta(minutes=2),
            watermark=NOW - timedelta(seconds=65),
            watermark_age_seconds=65.0,
            offset=17,
        ),
        dead_letters=(),
        producers=(
            ProducerStatus(
                "queuestream-exigo",
                "running",
                NOW - timedelta(minutes=5),
                sweep={
                    "started": "2026-03-01T11:00:00+00:00",
                    "finished": "2026-03-01T11:02:00+00:00",
                    "findings": {
                        "customers": {"checked": 40, "deleted": 1, "late": 0, "repaired": 2},
                        "orders": {"checked": 60, "deleted": 0, "late": 0, "repaired": 0},
                    },
                },
            ),
            ProducerStatus(
                "queuestream-other",
                "stuck",
                NOW - timedelta(seconds=30),
                reason="NaN <is> not a number",
                table="payments",
                key='{"PaymentID": 7}',
                column="Amount",
            ),
        ),
    )


def test_producer_status_round_trips_through_its_json() -> None:
    for status in _snapshot().producers:
        assert ProducerStatus.decode(status.encode()) == status


def test_breaches_name_group_topic_and_partition() -> None:
    snapshot = _snapshot(lag_messages=5, lag_seconds=42.0)
    [breach] = breaches(snapshot, LagLimits(max_messages=0))
    assert breach.describe() == f"group {GROUP}: exigo.orders[1] lag 5 messages > 0"
    [breach] = breaches(snapshot, LagLimits(max_seconds=30))
    assert "42.0 s > 30 s" in breach.describe()
    assert breaches(snapshot, LagLimits(max_messages=5, max_seconds=60)) == []
    assert breaches(snapshot, LagLimits(max_messages=0), groups=["other"])[0].describe() == (
        "group other: no committed offsets on the topics of prefix 'exigo'"
    )


def test_snapshot_as_dict_is_json() -> None:
    data = json.loads(json.dumps(_snapshot().as_dict()))
    [group] = data["groups"]
    assert group["lag_messages"] == 5 and group["lag_seconds"] == 42.0
    assert group["partitions"][1] == {
        "topic": "exigo.orders",
        "partition": 1,
        "committed": 23,
        "end": 30,
        "lag_messages": 5,
        "lag_seconds": 42.0,
        "exact": True,
        "first_unconsumed": 24,
    }
    assert data["last_batch"]["refresh_id"] == "20260301T115900Z-abc"
    assert data["last_batch"]["watermark_age_seconds"] == 65.0
    assert data["topics"][0]["rate_per_second"] == round(4 / 60, 3)
    assert [p["state"] for p in data["producers"]] == ["running", "stuck"]
    assert data["producers"][1]["column"] == "Amount"


# --- views -------------------------------------------------------------------------


def _text(renderable: Any) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_terminal_view_shows_groups_lag_batch_and_topics() -> None:
    text = _text(render(_snapshot(), LagLimits(max_messages=0)))
    assert f"Consumer group {GROUP} (stable, 2 members)" in text
    assert "0: 0  1: 5 (42.0 s)" in text
    assert "20260301T115900Z-abc" in text
    assert "9: orders 7, payments 2" in text
    assert "(1m 05s old)" in text
    assert "exigo.orders.dlq" in text
    assert "12 30" in text  # end offsets by partition
    assert "queuestream-other" in text and "stuck" in text
    assert 'table payments, key {"PaymentID": 7}, column Amount: NaN <is> not a number' in text
    assert "100 rows checked: customers 1 deleted, 2 repaired" in text


def test_terminal_view_before_the_first_snapshot_shows_the_error() -> None:
    text = _text(render(None, error="BrokerUnavailableError: Kafka is down"))
    assert "waiting for the first snapshot" in text
    assert "BrokerUnavailableError: Kafka is down" in text


def test_web_page_escapes_and_refreshes_itself() -> None:
    hostile = '<script>alert("x")</script>'
    page = render_page(
        FeedState(_snapshot(name=hostile), error="<b>down</b>", version=3),
        LagLimits(max_messages=0),
        refresh_seconds=2,
    )
    assert '<meta http-equiv="refresh" content="2">' in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;down&lt;/b&gt;" in page
    assert '<dd id="refresh-id">20260301T115900Z-abc</dd>' in page
    assert 'class="over"' in page  # partition 1 is over --max-lag 0
    assert "column Amount: NaN &lt;is&gt; not a number" in page  # the stuck producer's row
    assert "100 rows checked: customers 1 deleted, 2 repaired" in page  # the last sweep


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        parse_address("localhost:http")


class _Collector:
    def __init__(self) -> None:
        self.closed = False

    def collect(self) -> Snapshot:
        return _snapshot()

    def close(self) -> None:
        self.closed = True


def test_server_serves_the_feed_and_stops() -> None:
    collector = _Collector()
    feed = SnapshotFeed(lambda: collector, interval=0.5).start()  # type: ignore[arg-type,return-value]
    [port] = free_ports(1)
    server = MonitorServer(("127.0.0.1", port), feed, LagLimits(), 1).start()
    try:
        wait_for(lambda: feed.current().snapshot, timeout=10, message="first snapshot")
        with urllib.request.urlopen(f"{server.url}", timeout=10) as response:
            page = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/html")
        assert GROUP in page and "20260301T115900Z-abc" in page
        with urllib.request.urlopen(f"{server.url}snapshot.json", timeout=10) as response:
            data = json.load(response)
        assert data["error"] is None
        assert data["snapshot"]["groups"][0]["name"] == GROUP
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{server.url}nothing", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()
        feed.stop()
    assert collector.closed
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}", timeout=2)


def test_check_on_age_flags_lag_whose_age_is_unknown() -> None:
    unknown = _snapshot(lag_messages=5, lag_seconds=None)
    [breach] = breaches(unknown, LagLimits(max_seconds=30))
    assert "age unknown" in breach.describe()
    assert breaches(_snapshot(lag_messages=0, lag_seconds=None), LagLimits(max_seconds=30)) == []


class _StuckCollector(_Collector):
    """A collector whose round waits on a broker that does not answer (until released)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    def collect(self) -> Snapshot:
        self.started.set()
        self.release.wait(60)
        return _snapshot()


def test_stopping_does_not_wait_out_a_round_stuck_on_the_broker() -> None:
    collector = _StuckCollector()
    feed = SnapshotFeed(lambda: collector, interval=0.5).start()  # type: ignore[arg-type,return-value]
    try:
        assert collector.started.wait(10)
        started = time.monotonic()
        feed.stop()  # as the monitor's SIGTERM does
        assert time.monotonic() - started < STOP_WAIT_SECONDS + 2
    finally:
        collector.release.set()
    # The round, once over, closes its collector and collects no more.
    wait_for(lambda: collector.closed, timeout=10, message="the collector closed")


class _Feed:
    """A feed whose snapshots come when the test says."""

    def __init__(self) -> None:
        self.state = FeedState(None, "collecting the first snapshot", 0)
        self.changed = threading.Condition()

    def current(self) -> FeedState:
        return self.state

    def wait_for_update(self, after: int, timeout: float) -> FeedState:
        with self.changed:
            self.changed.wait_for(lambda: self.state.version > after, timeout)
            return self.state

    def publish(self, error: str) -> None:
        with self.changed:
            self.state = FeedState(None, error, self.state.version + 1)
            self.changed.notify_all()


def test_the_live_view_into_a_file_or_pipe_writes_each_snapshot_as_it_comes() -> None:
    """rich's Live draws nothing until it ends where the output is not a terminal: a
    monitor logging to a file showed nothing while it ran."""
    import io

    from queuestream.monitor.terminal import live

    out = io.StringIO()
    console = Console(file=out, width=120)
    assert not console.is_terminal
    feed, stop = _Feed(), threading.Event()
    thread = threading.Thread(target=live, args=(feed, console, LagLimits(), stop))
    thread.start()
    try:
        wait_for(lambda: "collecting the first snapshot" in out.getvalue(), timeout=5)
        feed.publish("broker unreachable at 10:00")
        wait_for(lambda: "broker unreachable at 10:00" in out.getvalue(), timeout=5)
        feed.publish("broker unreachable at 10:05")
        wait_for(lambda: "broker unreachable at 10:05" in out.getvalue(), timeout=5)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert out.getvalue().index("10:00") < out.getvalue().index("10:05")
