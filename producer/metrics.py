"""The producer's Prometheus metrics, fed by the produce loop.

``queuestream produce --metrics-port P`` (or ``QUEUESTREAM_METRICS_PORT``) serves
them at ``http://<metrics_host>:P/metrics`` through :func:`queuestream.metrics.metrics_server`;
``metrics_host`` defaults to 127.0.0.1. :class:`ProducerMetrics` observes a
``ProduceLoop`` (``observer=``):

==============================================  =============================================
``queuestream_events_published_total``          events committed to Kafka, by ``table``, ``op``
``queuestream_refreshes_total``                 refreshes committed
``queuestream_refresh_duration_seconds``        histogram: snapshot to Kafka commit
``queuestream_refresh_errors_total``            failed refreshes (retried), by ``error`` class
``queuestream_watermark_timestamp_seconds``     the committed watermark (Unix time)
``queuestream_watermark_age_seconds``           now minus the watermark, computed when scraped:
                                                it grows while the producer is stuck
``queuestream_producer_dead_letters_total``     rows that cannot be encoded, sent to
                                                ``<topic>.dlq`` (``--max-errors``), by ``table``
``queuestream_producer_stuck``                  1 while a row that cannot be encoded stops the
                                                feed (no budget left), else 0
``queuestream_producer_stuck_row_info``         that row: ``table``, ``key`` and ``column``
``queuestream_sweep_rows_total``                rows of finished sweep passes, by ``table`` and
                                                ``result``: checked, deleted, late, repaired,
                                                refused
``queuestream_sweep_passes_total``              sweep passes finished
``queuestream_sweep_last_finished_seconds``     when the last pass finished (Unix time)
==============================================  =============================================

The two watermark gauges are absent until the watermark is known (read back at
start, or after the first refresh); procedure mode has no watermark. Every
metrics object has its own registry, so several loops (or tests) in one process
never share figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queuestream.metrics import DURATION_BUCKETS

if TYPE_CHECKING:
    from producer.refresh import RefreshResult
    from producer.sweep import SweepReport
    from queuestream.errors import EncodingError

__all__ = ["ProducerMetrics"]


class ProducerMetrics:
    """The producer's figures. It observes a ``ProduceLoop`` (``observer=``)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._watermark: datetime | None = None
        self._stuck: EncodingError | None = None
        self.published = Counter(
            "queuestream_events_published",
            "Change events committed to Kafka, by source table and op (c, u, d, r).",
            ["table", "op"],
            registry=self.registry,
        )
        self.refreshes = Counter(
            "queuestream_refreshes",
            "Refreshes committed to Kafka (with or without events).",
            registry=self.registry,
        )
        self.refresh_duration = Histogram(
            "queuestream_refresh_duration_seconds",
            "Duration of a committed refresh, from the frozen snapshot to the Kafka commit.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.refresh_errors = Counter(
            "queuestream_refresh_errors",
            "Refreshes that failed and are retried (the watermark did not move), by error class.",
            ["error"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "queuestream_producer_dead_letters",
            "Rows that cannot be encoded, sent to <topic>.dlq within the error budget, by table.",
            ["table"],
            registry=self.registry,
        )
        self.sweep_rows = Counter(
            "queuestream_sweep_rows",
            "Rows of finished sweep passes, by table and result (checked, deleted, late: "
            "stamped before the watermark but never published, repaired: changed without "
            "a new ModifiedDate, refused: a late or repaired row that cannot be encoded, a "
            "dead letter).",
            ["table", "result"],
            registry=self.registry,
        )
        self.sweep_passes = Counter(
            "queuestream_sweep_passes", "Sweep passes finished.", registry=self.registry
        )
        self.sweep_finished = Gauge(
            "queuestream_sweep_last_finished_seconds",
            "When the last sweep pass finished (Unix time).",
            registry=self.registry,
        )
        self.registry.register(_ScrapedCollector(self))

    @property
    def watermark(self) -> datetime | None:
        """The committed watermark, once known."""
        return self._watermark

    def started(self, watermark: datetime | None) -> None:
        """A refresher is ready, with the watermark it read back from Kafka."""
        if watermark is not None:
            self._watermark = watermark

    def refreshed(self, result: RefreshResult) -> None:
        """A refresh committed."""
        self.refreshes.inc()
        self.refresh_duration.observe(result.seconds)
        for name, count in result.op_counts.items():
            table, _, op = name.rpartition(".")
            self.published.labels(table, op).inc(count)
        for table, count in result.dead_letters.items():
            self.dead_letters.labels(table).inc(count)
        if result.window_end is not None:
            self._watermark = result.window_end
        self._stuck = None

    def failed(self, error: BaseException) -> None:
        """A refresh failed; the loop retries it."""
        self.refresh_errors.labels(type(error).__name__).inc()

    def swept(self, report: SweepReport) -> None:
        """A sweep pass finished."""
        self.sweep_passes.inc()
        for table, found in report.findings.items():
            for result, count in found.items():
                self.sweep_rows.labels(table, result).inc(count)
        if report.finished is not None:
            self.sweep_finished.set(report.finished.timestamp())

    def stuck(self, error: EncodingError) -> None:
        """A row that cannot be encoded stops the feed (cleared by the next refresh)."""
        self.refresh_errors.labels(type(error).__name__).inc()
        self._stuck = error

    def scraped_families(self) -> Iterator[Metric]:
        """The stuck-row gauges, and the watermark gauges (none while it is unknown)."""
        stuck = self._stuck
        yield GaugeMetricFamily(
            "queuestream_producer_stuck",
            "1 while a row that cannot be encoded stops the feed (no error budget left), else 0.",
            value=0 if stuck is None else 1,
        )
        if stuck is not None:
            row = GaugeMetricFamily(
                "queuestream_producer_stuck_row_info",
                "The row that stops the feed: its table, key (JSON) and column.",
                labels=["table", "key", "column"],
            )
            key = json.dumps(stuck.key, default=str, sort_keys=True)
            row.add_metric([stuck.table, key, stuck.column or ""], 1)
            yield row
        watermark = self._watermark
        if watermark is None:
            return
        stamp = watermark.timestamp()
        yield GaugeMetricFamily(
            "queuestream_watermark_timestamp_seconds",
            "The producer's committed watermark as Unix time: changes before it are published.",
            value=stamp,
        )
        yield GaugeMetricFamily(
            "queuestream_watermark_age_seconds",
            "Seconds between now and the committed watermark (grows while the producer is stuck).",
            value=self._clock() - stamp,
        )


class _ScrapedCollector(Collector):
    """Computes the stuck-row and watermark gauges when scraped."""

    def __init__(self, metrics: ProducerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.scraped_families())

    def describe(self) -> Iterable[Metric]:
        return []  # computed on every scrape: not checked for duplicates up front
