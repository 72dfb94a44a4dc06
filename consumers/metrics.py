"""A consumer runtime's Prometheus metrics, all labelled by ``target``.

``queuestream consume TARGET --metrics-port P`` (or ``QUEUESTREAM_METRICS_PORT``)
serves them at ``http://<metrics_host>:P/metrics`` through
:func:`queuestream.metrics.metrics_server`; ``metrics_host`` defaults to 127.0.0.1.
:class:`ConsumerMetrics` is fed by the consumer runtime (``ConsumerRuntime(metrics=...)``):

==============================================  =============================================
``queuestream_events_applied_total``            rows changed in the target, by target
                                                ``table`` and ``op`` (the sync log's counts)
``queuestream_batch_duration_seconds``          histogram: one batch's target transaction
``queuestream_stale_events_total``              events that changed nothing (not newer)
``queuestream_target_notices_total``            rows a target kept for an operator to look at,
                                                by target ``table`` and ``notice`` (the sync
                                                log's other counts: a customer deleted while
                                                its orders remain, say)
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
from collections.abc import Iterable
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from queuestream.metrics import DURATION_BUCKETS

if TYPE_CHECKING:
    from consumers.batch_apply import BatchOutcome
    from consumers.dead_letters import DeadLetter

__all__ = ["ConsumerMetrics"]

log = logging.getLogger(__name__)

_OPS = frozenset("cudr")  # the ops of the sync log's counts; other names are notices


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
        self.notices = Counter(
            "queuestream_target_notices",
            "Rows a target kept for an operator to look at instead of guessing, by target "
            "table and notice (e.g. ledger_accounts deleted_with_orders).",
            ["target", "table", "notice"],
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
                if op in _OPS:
                    self.applied.labels(self.target, table, op).inc(rows)
                else:
                    self.notices.labels(self.target, table, op).inc(rows)
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
