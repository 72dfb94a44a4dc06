"""The consumers' dead letters (promise 6, the seeds' "continue on first N errors").

An event that cannot be decoded or applied goes to ``<topic>.dlq`` (for example
``exigo.orders.dlq``) with its original key and value and the reason in
headers: queuestream's ``queuestream.errors.*`` and Kafka Connect's
``__connect.errors.*`` (:mod:`queuestream.dead_letters` lists them), plus the
target and consumer group that refused it.

The dead letters of a batch are flushed before the batch commits in the target:
a crash in between sends them again (at least once; the original topic,
partition and offset in the headers identify duplicates). Past the budget the
consumer stops and commits nothing of the batch that went over it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from queuestream import dead_letters as shared
from queuestream.dead_letters import ErrorContext, dlq_topic, ensure_dlq_topics, error_headers
from queuestream.errors import BrokerUnavailableError, DecodeError, FatalError, RecordError
from queuestream.failures import broker_failure
from queuestream.kafka_clients import idempotent_producer
from queuestream.settings import Settings

__all__ = ["DeadLetter", "DeadLetters", "ErrorBudget", "ErrorBudgetExceededError", "dlq_topic"]

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    raw_key: bytes | None
    raw_value: bytes | None
    error: RecordError

    def describe(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{where}: {type(self.error).__name__}: {self.error}"


class ErrorBudgetExceededError(FatalError):
    """More events failed than ``--max-errors`` allows; the failing batch was not committed."""


class ErrorBudget:
    """Counts failed events over the life of a consumer against ``max_errors``."""

    def __init__(self, max_errors: int) -> None:
        self._budget = shared.ErrorBudget(max_errors)

    @property
    def max_errors(self) -> int:
        return self._budget.max_errors

    @property
    def spent(self) -> int:
        return self._budget.spent

    def check(self, letters: list[DeadLetter], refreshes: list[str]) -> None:
        """Raise if ``letters`` do not fit in what is left of the budget."""
        if not letters or self._budget.fits(len(letters)):
            return
        first = letters[0]
        which = ", ".join(refreshes) or "undecodable events"
        msg = (
            f"{self.spent + len(letters)} failed events exceed the error budget of "
            f"{self.max_errors} (--max-errors); nothing of the batch ({which}) was committed. "
            f"First: {first.describe()}. Fix the cause, or raise --max-errors to send such "
            "events to the dead-letter topic and go on."
        )
        raise ErrorBudgetExceededError(msg)

    def spend(self, letters: list[DeadLetter]) -> None:
        """Count ``letters`` once their batch committed."""
        self._budget.spend(len(letters))


class DeadLetters:
    """Publishes failed events to their dead-letter topics and waits for the broker."""

    def __init__(self, settings: Settings, target: str, group: str) -> None:
        self.settings = settings
        self.target = target
        self.group = group
        self._producer: Producer | None = None
        self._created: set[str] = set()

    def _ensure(self, topics: set[str]) -> None:
        missing = topics - self._created
        if not missing:
            return
        ensure_dlq_topics(self.settings, missing)
        self._created |= missing

    def _headers(self, letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
        where = ErrorContext(
            topic=letter.topic,
            partition=letter.partition,
            offset=letter.offset,
            timestamp_ms=letter.timestamp_ms,
            stage="decode" if isinstance(letter.error, DecodeError) else "apply",
            by={"target": self.target, "group": self.group},
            connector=self.group,
        )
        return error_headers(letter.error, where)

    def publish(self, letters: list[DeadLetter]) -> None:
        """Send ``letters`` and wait until the broker has every one."""
        if not letters:
            return
        self._ensure({letter.topic for letter in letters})
        if self._producer is None:
            self._producer = idempotent_producer(self.settings)
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, _message: Any) -> None:
            if err is not None:
                failures.append(err)

        for letter in letters:
            self._producer.produce(
                dlq_topic(letter.topic),
                key=letter.raw_key,
                value=letter.raw_value,
                headers=self._headers(letter),
                on_delivery=delivered,
            )
            log.warning("dead letter: %s", letter.describe())
        remaining = self._producer.flush(_FLUSH_TIMEOUT)
        doing = "write dead letters (the batch was not committed)"
        if failures:
            raise broker_failure(failures[0], self.settings.kafka_bootstrap_servers, doing)
        if remaining:
            msg = (
                f"Kafka at {self.settings.kafka_bootstrap_servers}: could not {doing}: "
                f"{remaining} not acknowledged in {_FLUSH_TIMEOUT:g}s; retrying"
            )
            raise BrokerUnavailableError(msg)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(_FLUSH_TIMEOUT)
