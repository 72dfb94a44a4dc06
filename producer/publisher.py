"""Kafka transactions: all events of one refresh and its END marker commit together.

The producer is idempotent and transactional (``transactional.id``), so a
restarted producer fences its predecessor and aborts what that one left open;
consumers reading with ``read_committed`` see a refresh whole or not at all.

The body of a transaction may hold a snapshot open on the source. So the broker
must answer before the body starts (:meth:`TransactionalPublisher.check_reachable`),
a send that cannot make progress asks the broker again instead of waiting for
the local queue to drain, and every wait for the broker (commit, abort, the
caller's retries) comes after the body has returned, its snapshot released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from queuestream.errors import (
    BrokerUnavailableError,
    CommitOutcomeUnknownError,
    FatalError,
    FencedError,
    RetriableError,
)
from queuestream.failures import broker_failure
from queuestream.kafka_clients import (
    answer_unless_stopped,
    batches_topic,
    transactional_producer,
)
from queuestream.settings import Settings

__all__ = ["Headers", "Send", "TransactionalPublisher"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


class Send(Protocol):
    """Sends one message inside the transaction: ``(topic, key, value, partition)``."""

    def __call__(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int,
        headers: Headers | None = None,
    ) -> None: ...


_INIT_TIMEOUT = 60.0
#: How long a commit or abort waits for the broker, in logged steps, before its outcome
#: counts as unknown and the producer restarts.
_FINISH_PATIENCE = 120.0
#: A send that finds the local queue full this long asks whether the broker is still there.
_STUCK_SECONDS = 2.0
#: Sends between two ``poll(0)`` that serve the delivery reports already in.
_POLL_EVERY = 1000
#: The longest wait in ``poll`` for a report when the local queue is full.
_FULL_WAIT = 0.5
#: With a stop event, the longest single wait of a commit or abort for the broker: how
#: soon a stop is seen while the broker does not answer. librdkafka resumes a commit timed
#: out when called again, but advises the whole remaining time in one call (state may go
#: out of step when a request fails meanwhile), so the step is not shorter: a commit
#: takes 30-100 ms, and only one that takes longer is resumed.
_STOP_STEP = 2.0


class TransactionalPublisher:
    """Runs a function that sends messages inside one Kafka transaction."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop`` (the command's SIGTERM): once set, a wait for a broker that is down
        ends at once (:meth:`check_reachable`, :meth:`_wait_for_broker`) and what the
        transaction sent is dropped; nothing of it commits."""
        self.settings = settings
        self.stop = stop
        self.producer = producer or transactional_producer(settings)
        self._unpolled = 0
        self._probe = batches_topic(settings)  # what check_reachable asks the broker about
        self._init_transactions()

    def _init_transactions(self) -> None:
        """``init_transactions`` (which settles what an earlier producer left open), for up
        to :data:`_INIT_TIMEOUT`; with ``stop``, in steps of :data:`_STOP_STEP`.

        librdkafka resumes an init that timed out when it is called again, and a Python
        signal handler runs only once the call returns: a ``produce`` whose broker went
        away as it started (after its topic check had an answer) sat in one call for a
        minute, whatever SIGTERM said.
        """
        deadline = time.monotonic() + _INIT_TIMEOUT
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                self.producer.init_transactions(
                    left if self.stop is None else min(left, _STOP_STEP)
                )
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                once = self.stop is None or self.stop.is_set() or not error.retriable()
                if once or time.monotonic() >= deadline:
                    raise self._error(exc, "initialise transactions") from None

    def _error(self, exc: KafkaException, doing: str) -> Exception:
        error: KafkaError = exc.args[0]
        where = f"Kafka at {self.settings.kafka_bootstrap_servers}"
        if error.code() in (
            KafkaError._FENCED,
            KafkaError.PRODUCER_FENCED,
            KafkaError.INVALID_PRODUCER_EPOCH,
        ):
            return FencedError(
                f"another producer with transactional id "
                f"{self.settings.effective_transactional_id!r} took over; stop one of them "
                "(one producer publishes a topic prefix: a second source needs its own "
                "topic_prefix)"
            )
        if error.fatal():
            return FatalError(f"{where}: fatal error while trying to {doing}: {error.str()}")
        if error.txn_requires_abort():
            # e.g. the epoch bump librdkafka needs after an abort that raced its own
            # produce requests: the transaction is aborted; ``produce`` tries the refresh
            # again (its retry says when), ``refresh`` gives up after its attempts.
            return RetriableError(
                f"{where}: the transaction failed while trying to {doing} ({error.str()}); "
                "it is aborted: nothing was committed and the watermark did not move, so the "
                "refresh can run again at once"
            )
        failure = broker_failure(error, self.settings.kafka_bootstrap_servers, doing)
        if isinstance(failure, BrokerUnavailableError):
            return BrokerUnavailableError(
                f"{failure}; nothing was committed and the watermark did not move"
            )
        return failure

    def check_reachable(self) -> None:
        """Raise BrokerUnavailableError unless the broker answers a metadata request now.

        The request names one topic, the batches topic (made at start): metadata of
        every topic grows with the cluster, not the refresh, and this runs once a
        refresh. With 1,000 topics of 6 partitions in the cluster (``python -m
        bench.metadata_probe``): 13.6 to 14.7 ms, 8.4 to 9.1 of them the producer's
        CPU, a request for every topic; 0.3 to 0.4 ms, 0.1 of CPU, for one.
        """
        try:
            answer_unless_stopped(
                lambda seconds: self.producer.list_topics(self._probe, timeout=seconds),
                self.settings.broker_timeout_seconds,
                self.stop,
            )
        except KafkaException as exc:
            raise self._error(exc, "reach the broker") from None

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int,
        headers: Headers | None = None,
    ) -> None:
        """Queue one message; when the local queue is full, wait for deliveries to free it.

        A message holds its place in librdkafka's queue (and its memory) until its
        delivery report is served by ``poll``, even once the broker has it. So every
        :data:`_POLL_EVERY` sends serve the reports that are in (``poll(0)``, no wait),
        which keeps the queue short and memory flat; and a full queue waits in
        ``poll`` for the next report, which returns as soon as one is served rather
        than after a fixed sleep.
        """
        self._unpolled += 1
        if self._unpolled >= _POLL_EVERY:
            self._unpolled = 0
            self.producer.poll(0)
        try:
            if headers is None:
                self.producer.produce(topic, value, key, partition)
            else:
                self.producer.produce(topic, value, key, partition, headers=headers)
        except BufferError:
            self._send_when_room(topic, key, value, partition, headers)
        except KafkaException as exc:  # the transaction is in an error state (the body aborts)
            raise self._error(exc, f"queue a message for {topic}") from None

    def _send_when_room(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int,
        headers: Headers | None,
    ) -> None:
        full_since = time.monotonic()
        while True:
            self.producer.poll(_FULL_WAIT)  # returns once a delivery report was served
            try:
                if headers is None:
                    self.producer.produce(topic, value, key, partition)
                else:
                    self.producer.produce(topic, value, key, partition, headers=headers)
                return
            except KafkaException as exc:
                raise self._error(exc, f"queue a message for {topic}") from None
            except BufferError:
                now = time.monotonic()
                if now - full_since > _STUCK_SECONDS:
                    # Not draining: a broker that went away fails the body (and releases
                    # its snapshot) now rather than when the queued messages time out.
                    self.check_reachable()
                    full_since = now

    def transaction(self, body: Callable[[Send], None]) -> None:
        """Run ``body(send)`` in one transaction; commit, or abort and raise.

        The broker answered just before ``body`` starts; commit and abort, which may
        wait for the broker, come after it has returned or raised.
        """
        self.check_reachable()
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise self._error(exc, "begin a transaction") from None
        try:
            body(self.send)
        except BaseException:
            self._abort()
            raise
        self._commit()

    def _commit(self) -> None:
        """Commit; a retriable failure is resumed by calling commit again, never aborted
        (the commit may already be in progress on the broker)."""
        try:
            self._wait_for_broker(self.producer.commit_transaction, "commit")
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.retriable():
                raise self._unknown(error) from None
            if error.txn_requires_abort():
                self._abort()
            raise self._error(exc, "commit the refresh") from None

    def _abort(self) -> None:
        try:
            self._wait_for_broker(self.producer.abort_transaction, "abort")
        except KafkaException as exc:
            raise self._unknown(exc.args[0]) from None

    def _wait_for_broker(self, finish: Callable[[float], None], what: str) -> None:
        """Commit or abort, calling ``finish`` again after each retriable failure, in
        steps of ``broker_timeout_seconds``, for up to :data:`_FINISH_PATIENCE`.

        A broker that goes away between the body and its end (a rolling restart, an
        outage) leaves the call waiting: each step says so in the log at once, rather
        than after a minute of silence. Raises the last KafkaException when it is not
        retriable or the patience is spent, or once ``stop`` is set: the steps are then
        :data:`_STOP_STEP` long (librdkafka goes on with the commit between them), and a
        commit given up on is settled by the next producer's ``init_transactions``.
        """
        step = self.settings.broker_timeout_seconds
        started = said = time.monotonic()
        while True:
            try:
                finish(step if self.stop is None else min(step, _STOP_STEP))
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                now = time.monotonic()
                waited = now - started
                stopping = self.stop is not None and self.stop.is_set()
                if not error.retriable() or waited >= _FINISH_PATIENCE or stopping:
                    raise
                if self.stop is not None and now - said < step:
                    continue  # said once a broker_timeout_seconds, as without stop
                said = now
                log.warning(
                    "%s not acknowledged yet after %.0f s (%s); retrying, for up to %.0f s "
                    "before the producer restarts and reads back what committed",
                    what,
                    waited,
                    error.str(),
                    _FINISH_PATIENCE,
                )

    def _unknown(self, error: KafkaError) -> CommitOutcomeUnknownError:
        return CommitOutcomeUnknownError(
            f"Kafka at {self.settings.kafka_bootstrap_servers} did not confirm the commit "
            f"({error.str()}); whether the refresh committed is unknown, so the producer "
            "restarts and reads back its committed watermark"
        )

    def close(self) -> None:
        if self.stop is not None and self.stop.is_set():
            # Stopped: what is still queued belongs to a transaction that does not commit,
            # and waiting to deliver it to a broker that is down held the exit for 10 s.
            self.producer.purge()
        self.producer.flush(10)
