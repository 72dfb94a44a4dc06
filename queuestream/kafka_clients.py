"""Kafka client configuration and topics, shared by the producer and the consumers.

Every client queuestream makes (producer, consumers, admin clients of the monitor,
replay and rebuild, the batches readers) takes its options from one function,
:func:`client_options`: the bootstrap servers, the user's librdkafka options from
``settings.kafka`` and the secrets read from ``settings.kafka_secret_files``. Those
pass through untouched and win over the defaults here, except the few that the
guarantees depend on (transactions, isolation level, manual commits), which are
always set. Options that only the other kind of client reads are left out (an
admin client is a producer handle underneath: librdkafka logs a CONFWARN line for
each consumer property it is given), so one ``kafka`` table serves every command.

A client that the broker refuses (wrong SASL password, TLS certificate not trusted)
is told apart from a broker that is down: :class:`ClientErrors` records librdkafka's
authentication and TLS errors and turns them into a
:class:`~queuestream.errors.ConfigurationError` within seconds instead of a time-out.

Two of librdkafka's calls wait where nobody asked them to; the readers use the
helpers here instead: :func:`assign_at_once` to assign partitions to a consumer that
may not know their leaders yet, :func:`consume_arrived` to read what has arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from queuestream.errors import BrokerAccessError, ConfigurationError
from queuestream.failures import broker_failure
from queuestream.settings import Settings
from queuestream.tables import BATCHES, TABLES, topic_for

__all__ = [
    "BATCH_MESSAGE_MAX_BYTES",
    "CONSUMER_ONLY",
    "LIBRDKAFKA_LOGGER",
    "PRODUCER_ONLY",
    "ClientErrors",
    "admin_client",
    "answer_unless_stopped",
    "assign_at_once",
    "batches_topic",
    "change_topics",
    "client_options",
    "consume_arrived",
    "consumer_config",
    "create_topics",
    "ensure_topics",
    "idempotent_producer",
    "producer_config",
    "raise_if_refused",
    "topic_partition_counts",
    "transactional_producer",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The END marker can carry many overlap digests; allow it to be large.
BATCH_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
_ADMIN_TIMEOUT = 15.0
_PROBE_SECONDS = 5.0  # longest wait of admin_client for a first answer or a refusal
_PROBE_STEP = 0.5
#: The longest single wait of :func:`answer_unless_stopped` while no broker is up.
_STOP_STEP = 0.5


#: librdkafka's own log lines go here instead of straight to stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("queuestream.librdkafka")


#: librdkafka properties that only a producer reads (CONFIGURATION.md, C/P column "P").
PRODUCER_ONLY = frozenset(
    {
        "transactional.id",
        "transaction.timeout.ms",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.ms",
        "linger.ms",
        "message.send.max.retries",
        "retries",
        "queue.buffering.backpressure.threshold",
        "compression.codec",
        "compression.type",
        "compression.level",
        "batch.num.messages",
        "batch.size",
        "delivery.report.only.error",
        "sticky.partitioning.linger.ms",
        "request.required.acks",
        "acks",
        "request.timeout.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "queuing.strategy",
        "partitioner",
    }
)

#: librdkafka properties that only a consumer reads (CONFIGURATION.md, C/P column "C").
CONSUMER_ONLY = frozenset(
    {
        "group.id",
        "group.instance.id",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "group.protocol.type",
        "group.protocol",
        "group.remote.assignor",
        "coordinator.query.interval.ms",
        "max.poll.interval.ms",
        "enable.auto.commit",
        "auto.commit.enable",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
        "isolation.level",
        "enable.partition.eof",
        "check.crcs",
        "auto.offset.reset",
    }
)

ClientRole = Literal["producer", "consumer", "admin"]
_NOT_READ_BY: dict[str, frozenset[str]] = {
    "producer": CONSUMER_ONLY,
    "consumer": PRODUCER_ONLY,
    "admin": PRODUCER_ONLY | CONSUMER_ONLY,
}


#: librdkafka's first reconnect backoff (its default is 100 ms; Kafka's Java clients' 50).
_RECONNECT_BACKOFF_MS = 20


def client_options(settings: Settings, role: ClientRole) -> dict[str, Any]:
    """The options every Kafka client of ``role`` starts from.

    Bootstrap servers, the librdkafka logger, ``settings.kafka`` and the secrets from
    ``settings.kafka_secret_files``, less the keys that only another role reads.
    """
    drop = _NOT_READ_BY[role]
    user = {k: v for k, v in settings.kafka_options().items() if k not in drop}
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "logger": LIBRDKAFKA_LOGGER,
        # librdkafka drops its bootstrap connection once it knows the brokers, and a
        # request in flight on it is sent again after a pause this backoff sets
        # ("still suppressed for 49ms" in its debug log): at the default of 100 ms a
        # new client's first answers took 53-57 ms on a local broker, at 20 ms 14 ms.
        # Reconnecting to a broker that went away still backs off exponentially, to
        # reconnect.backoff.max.ms (10 s).
        "reconnect.backoff.ms": _RECONNECT_BACKOFF_MS,
        **user,
    }


class ClientErrors:
    """librdkafka's ``error_cb``: tells a broker that refuses us from one that is down.

    Authentication failures and untrusted TLS certificates are permanent: once they
    have repeated for ``REFUSED_AFTER`` seconds (a broker that is still loading its
    SCRAM credentials may refuse a first attempt) the callback raises
    BrokerAccessError, which confluent-kafka re-raises from the client's
    ``poll()``. Other errors only mark the client as not connected.
    """

    REFUSED_AFTER = 1.0  # seconds of refusals before they count as a wrong setting

    def __init__(self, settings: Settings) -> None:
        self._where = settings.kafka_bootstrap_servers
        self._first_refusal: float | None = None
        self.refused: str | None = None
        self.down = False

    def __call__(self, error: KafkaError) -> None:
        if not _is_refusal(error):
            self.down = True
            return
        now = time.monotonic()
        if self._first_refusal is None or now - self._first_refusal > 30:
            self._first_refusal = now
        self.refused = error.str()
        if now - self._first_refusal >= self.REFUSED_AFTER:
            raise_if_refused(self, self._where)


def _is_refusal(error: KafkaError) -> bool:
    code = error.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return True
    return code == KafkaError._SSL and "certificate verify failed" in error.str()


def raise_if_refused(errors: ClientErrors, where: str) -> None:
    """Raise BrokerAccessError (a ConfigurationError) when the broker refused the client's
    credentials or TLS certificate."""
    if errors.refused is None:
        return
    msg = (
        f"Kafka at {where} refused the connection: {errors.refused}. Check "
        "security.protocol, sasl.mechanism, sasl.username and the password "
        "(QUEUESTREAM_KAFKA or kafka_secret_files), and ssl.ca.location"
    )
    raise BrokerAccessError(msg)


def _with_errors(config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    config.setdefault("error_cb", ClientErrors(settings))
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    options = client_options(settings, "producer")
    config: dict[str, Any] = {
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        # The local queue bounds the producer's memory (a refresh of a million rows
        # queues two million messages: events and state records); the publisher serves
        # delivery reports as it sends, so the queue holds what is in flight only.
        "queue.buffering.max.messages": 100_000,
        "queue.buffering.max.kbytes": 131_072,
        "message.max.bytes": BATCH_MESSAGE_MAX_BYTES + 65_536,
        "message.timeout.ms": 120_000,
        **options,
    }
    config.update(
        {
            "transactional.id": settings.effective_transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "transaction.timeout.ms": settings.transaction_timeout_ms,
        }
    )
    return _with_errors(config, settings)


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": BATCH_MESSAGE_MAX_BYTES * 2,
        "max.partition.fetch.bytes": BATCH_MESSAGE_MAX_BYTES + 65_536,
        # A dead member's partitions move within 10 s (README, "Consumer groups").
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        **client_options(settings, "consumer"),
        **extra,
    }
    config.update({"isolation.level": "read_committed", "enable.auto.commit": False})
    return _with_errors(config, settings)


#: How long :func:`assign_at_once` waits for the topics' leaders before assigning anyway.
_LEADERS_SECONDS = 5.0


def assign_at_once(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """``consumer.assign(partitions)``, reading from them at once.

    librdkafka, asked to read a partition whose leader it does not know yet (a consumer
    just made), waits for a fixed 500 ms timer before it first asks where to start:
    every ``rebuild``, monitor snapshot and producer start lost half a second there.
    One metadata request for the topics first takes a round trip instead. Should it
    fail, the partitions are assigned anyway and librdkafka finds the leaders itself.
    """
    for topic in sorted({tp.topic for tp in partitions}):
        try:
            consumer.list_topics(topic, timeout=_LEADERS_SECONDS)
        except KafkaException as exc:
            log.debug("no metadata for %s before assigning it (%s): assigning anyway", topic, exc)
            break
    consumer.assign(partitions)


def consume_arrived(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` messages: those that have arrived, at once; when none has,
    the first to arrive within ``timeout`` seconds and those that came with it.

    ``consumer.consume(max_messages, timeout)`` returns only once it holds
    ``max_messages`` or the time is up: a refresh of fewer events than that (and the
    end-of-partition events) waited out the whole timeout, 0.2 s per turn of a
    consumer's loop, and a second at the end of the producer's state.
    """
    messages = consumer.consume(num_messages=max_messages, timeout=0)
    if messages or timeout <= 0:
        return messages
    first = consumer.consume(num_messages=1, timeout=timeout)
    if not first or max_messages == 1:
        return first
    return first + consumer.consume(num_messages=max_messages - 1, timeout=0)


#: How long closing a consumer may take before the command goes on without it (seconds).
#: A close on a reachable broker takes milliseconds (a LeaveGroup round trip).
CLOSE_SECONDS = 2.0


def close_consumer(consumer: Consumer, what: str, within: float = CLOSE_SECONDS) -> None:
    """``consumer.close()``, given up after ``within`` seconds.

    librdkafka's close has no time limit: it waits until every offset commit in flight
    has an answer (librdkafka issue 3740). A group member whose coordinator went away
    with a commit outstanding (the broker down, say) never finished closing, so a
    ``consume`` stopped during a broker outage never exited (seen in CI: still running
    90 s after SIGTERM). The close runs in a thread of its own. Should it not return in
    time, the command goes on without it and exits; the group hands the member's
    partitions on after ``session_timeout_ms``, and the offsets that rule are those in
    the target, so nothing is lost. Nothing is closed twice: the thread keeps the
    consumer.
    """
    failed: list[BaseException] = []
    given_up = False
    lock = threading.Lock()  # the caller gives up, or takes the failure: one of the two

    def close() -> None:
        try:
            consumer.close()
        except BaseException as exc:  # raised in the caller's thread below
            with lock:
                failed.append(exc)
                late = given_up
            if late:  # the caller has gone on: said here
                log.warning("closing %s, after it was given up: %s", what, exc)

    closing = threading.Thread(target=close, name=f"close {what}", daemon=True)
    closing.start()
    closing.join(within)
    with lock:
        given_up = closing.is_alive() and not failed
    if given_up:
        log.warning(
            "closing %s: Kafka did not answer within %gs; going on without it (a group "
            "hands this member's partitions on after session_timeout_ms)",
            what,
            within,
        )
    elif failed:
        if not isinstance(failed[0], KafkaException | RuntimeError):
            raise failed[0]  # a callback's own failure (rebalance, error)
        log.warning("closing %s: %s", what, failed[0])


def idempotent_producer(settings: Settings) -> Producer:
    """A plain (non-transactional) producer that writes each message once, e.g. dead letters."""
    config: dict[str, Any] = {"linger.ms": 5, **client_options(settings, "producer")}
    for key in ("transactional.id", "transaction.timeout.ms"):
        config.pop(key, None)
    config.update({"enable.idempotence": True, "acks": "all"})
    return Producer(_with_errors(config, settings))


def admin_client(settings: Settings) -> AdminClient:
    """An admin client with the same connection and security options as every other client.

    It connects at once: a broker that refuses the credentials or the TLS handshake
    raises ConfigurationError here, within seconds, instead of every request timing
    out as if the broker were down. An unreachable broker is left to the caller.
    """
    errors = ClientErrors(settings)
    config: dict[str, Any] = {**client_options(settings, "admin"), "error_cb": errors}
    admin = AdminClient(config)
    deadline = time.monotonic() + min(_PROBE_SECONDS, settings.broker_timeout_seconds)
    while True:
        try:
            admin.list_topics(timeout=_PROBE_STEP)
        except KafkaException:
            pass
        else:
            return admin
        admin.poll(0)  # serves error_cb, which raises once the refusals have lasted
        if time.monotonic() >= deadline:
            raise_if_refused(errors, settings.kafka_bootstrap_servers)
            return _unanswered(admin, settings)
        if errors.down and errors.refused is None:
            return _unanswered(admin, settings)


#: The brokers :func:`_unanswered` has said it waits for, in this process.
_SAID_WAITING: set[str] = set()


def _unanswered(admin: AdminClient, settings: Settings) -> AdminClient:
    """``admin``, of a broker that has not answered yet: said, once a process (a retry loop
    logs each attempt after it; a live monitor collects every few seconds), since the
    caller's request may now wait ``broker_timeout_seconds`` before it gives up."""
    servers = settings.kafka_bootstrap_servers
    if servers not in _SAID_WAITING:
        _SAID_WAITING.add(servers)
        log.info(
            "Kafka at %s does not answer yet: waiting up to %.0fs (broker_timeout_seconds)",
            servers,
            settings.broker_timeout_seconds,
        )
    return admin


def transactional_producer(settings: Settings) -> Producer:
    return Producer(producer_config(settings))


def change_topics(settings: Settings) -> list[str]:
    return [topic_for(settings.topic_prefix, t.name) for t in TABLES]


def batches_topic(settings: Settings) -> str:
    return topic_for(settings.topic_prefix, BATCHES)


def answer_unless_stopped(
    ask: Callable[[float], T], timeout: float, stop: threading.Event | None
) -> T:
    """``ask(timeout)``: a request librdkafka waits for (metadata), which ``stop`` can end.

    librdkafka cannot cancel a request, and a Python signal handler runs only once the
    call returns: a command told to stop (SIGTERM, Ctrl-C) while the broker was down
    waited out the rest of ``broker_timeout_seconds`` (15 s) first, in every such call.
    With ``stop``, while no broker is up (librdkafka answers ``_TRANSPORT`` at the end
    of each step: nothing was sent) the request is asked again in steps of
    :data:`_STOP_STEP`, and its failure is raised as soon as ``stop`` is set or the time
    is up. Any other failure (a broker that is up and slow to answer) gets the rest of
    the time in one request, as without ``stop``.
    """
    if stop is None:
        return ask(timeout)
    deadline = time.monotonic() + timeout
    step = _STOP_STEP
    while True:
        try:
            return ask(max(0.0, min(step, deadline - time.monotonic())))
        except KafkaException as exc:
            if stop.is_set() or time.monotonic() >= deadline:
                raise
            if exc.args[0].code() != KafkaError._TRANSPORT:
                step = timeout


def topic_partition_counts(
    admin: AdminClient,
    settings: Settings,
    stop: threading.Event | None = None,
    doing: str | None = None,
) -> dict[str, int]:
    """Every topic and its partition count: a metadata request, which a broker that does
    not answer within ``broker_timeout_seconds`` fails with BrokerUnavailableError
    (sooner once ``stop`` is set: :func:`answer_unless_stopped`); ``doing`` names the
    request in the error (:func:`~queuestream.failures.broker_failure`)."""
    try:
        metadata = answer_unless_stopped(
            lambda seconds: admin.list_topics(timeout=seconds),
            settings.broker_timeout_seconds,
            stop,
        )
    except KafkaException as exc:
        raise broker_failure(exc.args[0], settings.kafka_bootstrap_servers, doing) from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not t.error}


def create_topics(admin: AdminClient, topics: list[NewTopic], where: str | None = None) -> None:
    """Create ``topics``; one that already exists is fine (another client made it).

    ``where`` (the bootstrap servers) names the broker in errors. One the broker refuses
    for good (a replication factor above its number of brokers, a policy) is a
    BrokerAccessError that says what to set; anything else may pass and is retriable.
    """
    for topic, future in admin.create_topics(topics, operation_timeout=_ADMIN_TIMEOUT).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise broker_failure(exc.args[0], where, f"create topic {topic}") from None


def ensure_topics(
    settings: Settings,
    admin: AdminClient | None = None,
    internal: Iterable[str] = (),
    *,
    created: list[str] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Create the change topics, the batches topic and the ``internal`` topics where missing
    (their names added to ``created``, when given). ``stop`` set ends a wait for a broker
    that is down (:func:`answer_unless_stopped`).

    Change topics get ``settings.partitions`` partitions and keep history
    (``retention.ms`` -1 by default); the batches topic has one partition so that
    its markers keep refresh order. Internal topics are queuestream's own
    (``__queuestream-*``: the producer's state and status): compacted, one
    partition, the latest record per key kept forever. Existing change topics must all have the same
    partition count, or customers would not be co-partitioned. Returns that count.
    """
    if admin is None:  # not `admin or ...`: an AdminClient with nothing queued is falsy
        admin = admin_client(settings)
    existing = topic_partition_counts(admin, settings, stop)
    retention = str(settings.retention_ms)
    wanted = {
        topic: NewTopic(
            topic,
            num_partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            config={"retention.ms": retention, "cleanup.policy": "delete"},
        )
        for topic in change_topics(settings)
    }
    batches = batches_topic(settings)
    wanted[batches] = NewTopic(
        batches,
        num_partitions=1,
        replication_factor=settings.replication_factor,
        config={
            # The END markers hold the producer's progress: never deleted by age.
            "retention.ms": "-1",
            "cleanup.policy": "delete",
            "max.message.bytes": str(BATCH_MESSAGE_MAX_BYTES + 65_536),
        },
    )
    for name in internal:
        wanted[name] = NewTopic(
            name,
            num_partitions=1,
            replication_factor=settings.replication_factor,
            config={"cleanup.policy": "compact", "retention.ms": "-1"},
        )
    missing = [new for topic, new in wanted.items() if topic not in existing]
    if missing:
        create_topics(admin, missing, settings.kafka_bootstrap_servers)
        if created is not None:
            created.extend(new.topic for new in missing)
        existing = topic_partition_counts(admin, settings, stop)
    counts = {topic: existing.get(topic) for topic in change_topics(settings)}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{t}={n}" for t, n in counts.items())
        msg = (
            f"change topics have different partition counts ({listing}); co-partitioning by "
            "CustomerID needs one count: add partitions so that all are equal"
        )
        raise ConfigurationError(msg)
    return int(next(iter(counts.values())) or settings.partitions)
