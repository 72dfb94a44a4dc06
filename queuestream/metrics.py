"""Prometheus metrics of the producer and the consumers: the one place they are defined.

``queuestream produce --metrics-port P`` and ``queuestream consume TARGET
--metrics-port P`` (or ``QUEUESTREAM_METRICS_PORT``) serve them at
``http://<metrics_host>:P/metrics``; ``metrics_host`` defaults to 127.0.0.1.

Producer (:class:`ProducerMetrics`, fed by the produce loop):

==============================================  =============================================
``queuestream_events_published_total``          events committed to Kafka, by ``table``, ``op``
``queuestream_refreshes_total``                 refreshes committed
``queuestream_refresh_duration_seconds``        histogram: snapshot to Kafka commit
``queuestream_refresh_errors_total``            failed refreshes (retried), by ``error`` class
``queuestream_watermark_timestamp_seconds``     the committed watermark (Unix time)
``queuestream_watermark_age_seconds``           now minus the watermark, computed when scraped:
                                                it grows while the producer is stuck
==============================================  =============================================

The two watermark gauges are absent until the watermark is known (read back at
start, or after the first refresh); procedure mode has no watermark.

Consumers (:class:`ConsumerMetrics`, fed by the consumer runtime), all by ``target``:

==============================================  =============================================
``queuestream_events_applied_total``            rows changed in the target, by target
                                                ``table`` and ``op`` (the sync log's counts)
``queuestream_batch_duration_seconds``          histogram: one batch's target transaction
``queuestream_stale_events_total``              events that changed nothing (not newer)
``queuestream_apply_errors_total``              events that could not be applied (committed
                                                as dead letters within the error budget)
``queuestream_dead_letters_total``              events written to a dead-letter topic, by
                                                original ``topic`` (a batch that is retried
                                                writes its dead letters again)
``queuestream_target_outages_total``            times the target (or Kafka) became unreachable
``queuestream_consumer_lag_messages``           per owned ``topic`` and ``partition``: the log
                                                end minus the next offset to apply
==============================================  =============================================

Every metrics object has its own registry, so several runtimes (or tests) in one
process never share figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queuestream.errors import ConfigurationError

if TYPE_CHECKING:
    from consumers.dead_letters import DeadLetter
    from consumers.runtime import BatchOutcome
    from producer.refresh import RefreshResult

__all__ = ["DURATION_BUCKETS", "ConsumerMetrics", "ProducerMetrics", "metrics_server"]

log = logging.getLogger(__name__)

#: Seconds; refreshes and batches range from milliseconds to minutes (a re-sync).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


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
        self.registry.register(_WatermarkCollector(self))

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
        if result.window_end is not None:
            self._watermark = result.window_end

    def failed(self, error: BaseException) -> None:
        """A refresh failed; the loop retries it."""
        self.refresh_errors.labels(type(error).__name__).inc()

    def watermark_families(self) -> Iterator[Metric]:
        """The watermark gauges as of now; none while the watermark is unknown."""
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


class _WatermarkCollector(Collector):
    """Computes the watermark gauges when scraped (absent while the watermark is unknown)."""

    def __init__(self, metrics: ProducerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.watermark_families())

    def describe(self) -> Iterable[Metric]:
        return []  # computed on every scrape: not checked for duplicates up front


class ConsumerMetrics:
    """One consumer runtime's figures (``ConsumerRuntime(metrics=...)``), labelled by target."""

    def __init__(self, target: str, registry: CollectorRegistry | None = None) -> None:
        self.target = target
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lag_keys: set[tuple[str, int]] = set()
        self.applied = Counter(
            "queuestream_events_applied",
            "Rows changed in the target, by target table and op (the sync log's counts).",
            ["target", "table", "op"],
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "queuestream_batch_duration_seconds",
            "Duration of one applied batch (one target transaction).",
            ["target"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.apply_errors = Counter(
            "queuestream_apply_errors",
            "Events that could not be applied and went to a dead-letter topic "
            "(counted when their batch committed).",
            ["target"],
            registry=self.registry,
        )
        self.dead_letters_written = Counter(
            "queuestream_dead_letters",
            "Events written to <topic>.dlq, by original topic (a retried batch writes them again).",
            ["target", "topic"],
            registry=self.registry,
        )
        self.stale = Counter(
            "queuestream_stale_events",
            "Events that changed nothing: the target already held that version or a newer one.",
            ["target"],
            registry=self.registry,
        )
        self.outages = Counter(
            "queuestream_target_outages",
            "Times the target database (or Kafka) became unreachable and the consumer waited.",
            ["target"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "queuestream_consumer_lag_messages",
            "Per owned partition: the log end minus the next offset to apply.",
            ["target", "topic", "partition"],
            registry=self.registry,
        )
        # Series with no other labels exist from the start, at zero.
        for counter in (self.apply_errors, self.stale, self.outages):
            counter.labels(target)
        self.batch_duration.labels(target)

    def batch(self, outcome: BatchOutcome) -> None:
        """A batch committed in the target."""
        self.batch_duration.labels(self.target).observe(outcome.seconds)
        for entry in outcome.entries:
            for name, rows in entry.counts.items():
                table, _, op = name.rpartition(".")
                self.applied.labels(self.target, table, op).inc(rows)
            self.stale.labels(self.target).inc(entry.events_stale)
            self.apply_errors.labels(self.target).inc(entry.errors)

    def dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        """``letters`` reached their dead-letter topics."""
        for letter in letters:
            self.dead_letters_written.labels(self.target, letter.topic).inc()

    def outage(self) -> None:
        """The target (or Kafka) became unreachable and the consumer waits."""
        self.outages.labels(self.target).inc()

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """The lag of every owned partition; partitions not named (revoked) are removed."""
        for topic, partition in self._lag_keys - set(lags):
            self.lag.remove(self.target, topic, str(partition))
        for (topic, partition), value in lags.items():
            self.lag.labels(self.target, topic, str(partition)).set(value)
        self._lag_keys = set(lags)

    def observe_lag(
        self,
        consumer: Consumer,
        owned: Iterable[tuple[str, int]],
        first_held: dict[tuple[str, int], int],
    ) -> None:
        """Lag from the consumer's cached log ends (no broker round trip).

        ``first_held``: per partition, the offset of the first event read but not yet
        applied. Where nothing is held, everything before the consumer's position is
        applied (or was before), so the position is the next offset to apply; it steps
        over transaction markers, so a partition read to its end shows 0. Partitions
        whose log end or position is not known yet (just assigned) are left out.
        """
        wanted = sorted(owned)
        lags: dict[tuple[str, int], int] = {}
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in wanted])
            for tp in positions:
                key = (tp.topic, tp.partition)
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                following = first_held.get(key, tp.offset)
                if high is None or high < 0 or following < 0:
                    continue
                lags[key] = max(0, high - following)
        except (KafkaException, RuntimeError) as exc:  # closing, or not assigned any more
            log.debug("consumer lag not available: %s", exc)
            return
        self.set_lag(lags)

    def forget_lag(self) -> None:
        """The runtime stopped: it owns no partitions any more."""
        self.set_lag({})


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


@contextmanager
def metrics_server(registry: CollectorRegistry, port: int | None, host: str) -> Iterator[None]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the block runs.

    Port 0 or None: no server. A port that cannot be bound is a ConfigurationError.
    """
    if not port:
        yield
        return
    try:
        started = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        msg = (
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another "
            "--metrics-port or metrics_host"
        )
        raise ConfigurationError(msg) from None
    log.info("metrics at %s", _url(host, port))
    try:
        yield
    finally:
        if isinstance(started, tuple):  # prometheus-client >= 0.19 returns (server, thread)
            server, thread = started
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
