"""Prometheus metrics bookkeeping: figures fed in come out of the registry, per object."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from consumers.assembly import Assembler
from consumers.batch_apply import BatchOutcome
from consumers.changes import Change
from consumers.dead_letters import DeadLetter
from consumers.metrics import ConsumerMetrics
from consumers.sync_log import SyncEntry
from producer.metrics import ProducerMetrics
from producer.produce_loop import ProduceLoop
from producer.refresh import RefreshResult
from queuestream.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DecodeError,
    EncodingError,
)
from queuestream.metrics import metrics_server
from queuestream.retry import Backoff
from queuestream.settings import load_settings
from tests.services import free_ports

SCRAPE_TIMEOUT = 10  # seconds


def _result(window_end: datetime | None, seconds: float, **op_counts: int) -> RefreshResult:
    ops = {k.replace("__", "."): v for k, v in op_counts.items()}
    counts: dict[str, int] = {}
    for name, n in ops.items():
        table = name.split(".")[0]
        counts[table] = counts.get(table, 0) + n
    return RefreshResult(
        "r1", "watermark", None, window_end, counts=counts, op_counts=ops, seconds=seconds
    )


# -- producer -----------------------------------------------------------------------


def test_published_events_refreshes_and_durations() -> None:
    metrics = ProducerMetrics()
    value = metrics.registry.get_sample_value
    metrics.refreshed(_result(None, 0.3, orders__c=3, orders__u=2, payments__c=1))
    metrics.refreshed(_result(None, 2.0, orders__u=4))
    metrics.refreshed(_result(None, 0.01))
    assert value("queuestream_events_published_total", {"table": "orders", "op": "c"}) == 3
    assert value("queuestream_events_published_total", {"table": "orders", "op": "u"}) == 6
    assert value("queuestream_events_published_total", {"table": "payments", "op": "c"}) == 1
    assert value("queuestream_refreshes_total") == 3
    assert value("queuestream_refresh_duration_seconds_count") == 3
    assert value("queuestream_refresh_duration_seconds_sum") == pytest.approx(2.31)
    assert value("queuestream_refresh_duration_seconds_bucket", {"le": "0.5"}) == 2


def test_watermark_age_is_computed_when_scraped() -> None:
    now = [1_700_000_100.0]
    metrics = ProducerMetrics(clock=lambda: now[0])
    value = metrics.registry.get_sample_value
    assert value("queuestream_watermark_age_seconds") is None, "absent before it is known"
    assert value("queuestream_watermark_timestamp_seconds") is None
    metrics.started(None)  # a first run: nothing read back
    assert value("queuestream_watermark_age_seconds") is None
    metrics.started(datetime.fromtimestamp(1_700_000_000, UTC))  # read back at start
    assert value("queuestream_watermark_age_seconds") == 100
    now[0] += 30  # stuck: the age grows between scrapes
    assert value("queuestream_watermark_age_seconds") == 130
    metrics.refreshed(_result(datetime.fromtimestamp(1_700_000_125, UTC), 0.1))
    assert value("queuestream_watermark_age_seconds") == 5
    assert value("queuestream_watermark_timestamp_seconds") == 1_700_000_125
    metrics.refreshed(_result(None, 0.1))  # procedure mode: no window, the watermark stays
    assert value("queuestream_watermark_timestamp_seconds") == 1_700_000_125


class _Progress:
    watermark = datetime(2026, 1, 1, tzinfo=UTC)


class _FakeRefresher:
    """Fails ``failures`` times, then returns one result per refresh."""

    progress = _Progress()

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def refresh(self, since: Any = None) -> list[RefreshResult]:
        if self.failures:
            self.failures -= 1
            msg = "broker down"
            raise BrokerUnavailableError(msg)
        return [_result(datetime(2026, 1, 1, 0, 1, tzinfo=UTC), 0.2, customers__c=2)]

    def report(self, stuck_on: Any, sweep: Any = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_produce_loop_reports_to_its_observer() -> None:
    metrics = ProducerMetrics()
    value = metrics.registry.get_sample_value
    fake: Any = _FakeRefresher(failures=2)
    loop = ProduceLoop(lambda: fake, interval=0, backoff=Backoff(0.001, 0.01), observer=metrics)
    assert loop.run(max_refreshes=3) == 3
    assert value("queuestream_refresh_errors_total", {"error": "BrokerUnavailableError"}) == 2
    assert value("queuestream_refreshes_total") == 3
    assert value("queuestream_events_published_total", {"table": "customers", "op": "c"}) == 6
    assert metrics.watermark == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_a_stuck_row_and_dead_letters_show_in_the_producer_metrics() -> None:
    metrics = ProducerMetrics()
    value = metrics.registry.get_sample_value
    assert value("queuestream_producer_stuck") == 0
    bad = EncodingError(
        "NaN is not a number", table="payments", key={"PaymentID": 7}, column="Amount"
    )
    metrics.stuck(bad)
    assert value("queuestream_producer_stuck") == 1
    labels = {"table": "payments", "key": '{"PaymentID": 7}', "column": "Amount"}
    assert value("queuestream_producer_stuck_row_info", labels) == 1
    assert value("queuestream_refresh_errors_total", {"error": "EncodingError"}) == 1
    result = _result(datetime(2026, 1, 1, 0, 1, tzinfo=UTC), 0.2, customers__c=2)
    result.dead_letters = {"payments": 2}
    metrics.refreshed(result)
    assert value("queuestream_producer_stuck") == 0
    assert value("queuestream_producer_stuck_row_info", labels) is None
    assert value("queuestream_producer_dead_letters_total", {"table": "payments"}) == 2


# -- consumers ----------------------------------------------------------------------


def _letter(topic: str, offset: int) -> DeadLetter:
    return DeadLetter(
        topic, 0, offset, 0, b"k", b"v", DecodeError("bad bytes", table="orders", raw=b"v")
    )


def test_applied_rows_stale_errors_and_dead_letters() -> None:
    metrics = ConsumerMetrics("accounting")
    value = metrics.registry.get_sample_value
    target = {"target": "accounting"}
    assert value("queuestream_apply_errors_total", target) == 0, "present from the start"
    assert value("queuestream_target_outages_total", target) == 0
    metrics.batch(
        BatchOutcome(
            [
                SyncEntry("r1", 5, events_stale=2, counts={"invoices.c": 3, "invoice_lines.c": 2}),
                SyncEntry("r2", 1, errors=1, counts={"invoices.u": 1}),
            ],
            0.4,
        )
    )
    metrics.batch(BatchOutcome([SyncEntry("r3", 2, counts={"invoices.c": 2})], 1.5))
    applied = "queuestream_events_applied_total"
    assert value(applied, {**target, "table": "invoices", "op": "c"}) == 5
    assert value(applied, {**target, "table": "invoices", "op": "u"}) == 1
    assert value(applied, {**target, "table": "invoice_lines", "op": "c"}) == 2
    assert value("queuestream_stale_events_total", target) == 2
    assert value("queuestream_apply_errors_total", target) == 1
    assert value("queuestream_batch_duration_seconds_count", target) == 2
    assert value("queuestream_batch_duration_seconds_sum", target) == pytest.approx(1.9)

    metrics.dead_letters([_letter("x.orders", 4), _letter("x.orders", 9), _letter("x.payments", 1)])
    dead = "queuestream_dead_letters_total"
    assert value(dead, {**target, "topic": "x.orders"}) == 2
    assert value(dead, {**target, "topic": "x.payments"}) == 1

    metrics.outage()
    metrics.outage()
    assert value("queuestream_target_outages_total", target) == 2


def test_notices_are_counted_apart_from_rows_applied() -> None:
    metrics = ConsumerMetrics("accounting")
    counts = {"ledger_accounts.d": 2, "ledger_accounts.deleted_with_orders": 1}
    metrics.batch(BatchOutcome([SyncEntry("r1", 2, counts=counts)], 0.1))
    target = {"target": "accounting", "table": "ledger_accounts"}
    value = metrics.registry.get_sample_value
    assert value("queuestream_events_applied_total", {**target, "op": "d"}) == 2
    notice = {**target, "notice": "deleted_with_orders"}
    assert value("queuestream_target_notices_total", notice) == 1
    assert (
        value("queuestream_events_applied_total", {**target, "op": "deleted_with_orders"}) is None
    )


def test_two_runtimes_in_one_process_keep_their_own_figures() -> None:
    first, second = ConsumerMetrics("accounting"), ConsumerMetrics("shipping")
    first.batch(BatchOutcome([SyncEntry("r1", 1, counts={"invoices.c": 1})], 0.1))
    assert (
        second.registry.get_sample_value(
            "queuestream_batch_duration_seconds_count", {"target": "shipping"}
        )
        == 0
    )
    again = ConsumerMetrics("accounting")  # same names, no "Duplicated timeseries" error
    assert (
        again.registry.get_sample_value(
            "queuestream_events_applied_total",
            {"target": "accounting", "table": "invoices", "op": "c"},
        )
        is None
    )


class _FakeConsumer(Consumer):
    """Positions and cached log ends, as confluent_kafka's Consumer reports them."""

    # No Consumer.__init__: no configuration, no broker.
    def __init__(self, positions: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]):
        self.positions = positions
        self.ends = ends

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        assert cached, "no broker round trip"
        return 0, self.ends.get((partition.topic, partition.partition), -1001)


def test_lag_per_owned_partition_and_revoked_ones_removed() -> None:
    metrics = ConsumerMetrics("shipping")

    def lag(topic: str, partition: int) -> float | None:
        return metrics.registry.get_sample_value(
            "queuestream_consumer_lag_messages",
            {"target": "shipping", "topic": topic, "partition": str(partition)},
        )

    consumer = _FakeConsumer(
        positions={("x.orders", 0): 10, ("x.orders", 1): 7, ("x.orders", 2): 3},
        ends={("x.orders", 0): 10, ("x.orders", 1): 12, ("x.orders", 2): 3, ("x.orders", 3): 9},
    )
    owned = {("x.orders", 0), ("x.orders", 1), ("x.orders", 2), ("x.orders", 3)}
    # partition 2: read to its end, but events from offset 1 on are held, not applied
    metrics.observe_lag(consumer, owned, {("x.orders", 2): 1})
    assert lag("x.orders", 0) == 0  # read to its end (past the commit marker), nothing held
    assert lag("x.orders", 1) == 5
    assert lag("x.orders", 2) == 2
    assert lag("x.orders", 3) is None, "no position yet: left out"

    metrics.observe_lag(consumer, {("x.orders", 1)}, {})
    assert lag("x.orders", 1) == 5
    assert lag("x.orders", 0) is None and lag("x.orders", 2) is None, "revoked: removed"
    metrics.forget_lag()
    assert lag("x.orders", 1) is None


def test_first_held_offset_per_slot() -> None:
    assembler = Assembler()

    def change(refresh: str, partition: int, offset: int) -> Change:
        return Change(
            "orders", "u", {"id": offset}, {"id": offset}, 1, refresh, "x.orders",
            partition, offset, 0, None, None,
        )  # fmt: skip

    assert assembler.first_held() == {}
    for refresh, partition, offset in [("r2", 0, 8), ("r1", 0, 5), ("r1", 0, 6), ("r2", 1, 3)]:
        assembler.add(change(refresh, partition, offset))
    assembler.add_poison(_letter("x.orders", 2))
    assert assembler.first_held() == {("orders", 0): 2, ("orders", 1): 3}


# -- serving ------------------------------------------------------------------------


def test_metrics_are_served_only_with_a_port(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ProducerMetrics()
    metrics.refreshed(_result(None, 0.1, orders__c=2))
    with (
        metrics_server(metrics.registry, None, "127.0.0.1"),
        metrics_server(metrics.registry, 0, "127.0.0.1"),
    ):
        pass  # nothing to serve, nothing bound
    [port] = free_ports(1)
    caplog.set_level("INFO", logger="queuestream.metrics")
    with metrics_server(metrics.registry, port, "127.0.0.1"):
        url = f"http://127.0.0.1:{port}/metrics"
        assert f"metrics at {url}" in caplog.text
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            text = response.read().decode()
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}.*--metrics-port"):
            with metrics_server(metrics.registry, port, "127.0.0.1"):
                pass  # the port is taken
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("queuestream_events_published_total", (("op", "c"), ("table", "orders")))] == 2
    assert not any(name.startswith("python_") for name, _ in samples), "own registry only"
    with pytest.raises(OSError):  # stopped with the block
        urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT)


def test_metrics_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert defaults.metrics_port is None and defaults.metrics_host == "127.0.0.1"
    monkeypatch.setenv("QUEUESTREAM_METRICS_PORT", "9464")
    monkeypatch.setenv("QUEUESTREAM_METRICS_HOST", "0.0.0.0")
    settings = load_settings()
    assert settings.metrics_port == 9464 and settings.metrics_host == "0.0.0.0"
    assert load_settings(metrics_port=0).metrics_port == 0
    with pytest.raises(ConfigurationError, match="metrics_port"):
        load_settings(metrics_port=70000)
