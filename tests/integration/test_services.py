"""The service fixtures give working Kafka and PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)
from sqlalchemy.engine import make_url

from tests.helpers import wait_for
from tests.services import KAFKA_SCRIPT, REPO_ROOT


def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    futures[topic].result(timeout=30)
    wait_for(
        lambda: topic in admin.list_topics(timeout=5).topics,
        timeout=30,
        message=f"topic {topic} visible in metadata",
    )


def test_transactions_and_read_committed(kafka_bootstrap: str, unique: str) -> None:
    topic = f"{unique}.events"
    _create_topic(kafka_bootstrap, topic)

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{unique}-tx", "linger.ms": 0}
    )
    producer.init_transactions(30)
    for value, commit in [(b"one", True), (b"aborted", False), (b"two", True)]:
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=value)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{unique}-g",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        seen: list[bytes] = []

        def got_last() -> bool:
            msg: Message | None = consumer.poll(0.5)
            if msg is not None:
                if msg.error():
                    raise KafkaException(msg.error())
                seen.append(msg.value() or b"")
            return b"two" in seen

        wait_for(got_last, timeout=60, message=f"committed messages on {topic}")
        assert seen == [b"one", b"two"]
    finally:
        consumer.close()


def test_kafka_cli_tool_lists_groups(kafka_bootstrap: str, unique: str) -> None:
    topic = f"{unique}.tool"
    group = f"{unique}-tool-g"
    _create_topic(kafka_bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()

    proc = subprocess.run(
        [
            str(KAFKA_SCRIPT),
            "tool",
            "kafka-consumer-groups",
            "--bootstrap-server",
            kafka_bootstrap,
            "--list",
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert group in proc.stdout.split(), proc.stdout


def _written_by_kafka_local(admin: AdminClient) -> bool:
    """The broker runs on a server.properties that scripts/kafka-local.sh wrote (next to
    its data directory, as the script lays them out), not on an external cluster's."""
    node = min(admin.list_topics(timeout=30).brokers)
    resource = ConfigResource(ConfigResource.Type.BROKER, str(node))
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    data_dir = Path(configs["log.dirs"].value.split(",")[0])
    properties = data_dir.parent / "server.properties"
    return properties.is_file() and "scripts/kafka-local.sh" in properties.read_text()


def test_local_broker_maps_index_files_of_one_megabyte(kafka_bootstrap: str, unique: str) -> None:
    """scripts/kafka-local.sh: a new partition's offset and time indexes are 1 MB, not 10.

    Kafka creates them sparse at this size and maps them; the first write faults and the
    kernel zero-fills as much page cache as the disk reads ahead (8 MB on some VMs), which
    took the broker's CPU an event up to ten times its usual on a benchmark's new topics.
    """
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    if not _written_by_kafka_local(admin):
        pytest.skip("not a broker of scripts/kafka-local.sh: the index size is its setting")
    topic = f"{unique}.index"
    _create_topic(kafka_bootstrap, topic)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["segment.index.bytes"].value == str(1024 * 1024)


def test_postgres_database(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("select version()")).scalar_one()
            database = conn.execute(sa.text("select current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL")
    assert database == make_url(postgres_url).database


def test_source_url_backends(source_url: str) -> None:
    engine = sa.create_engine(source_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table probe (id integer primary key)"))
            conn.execute(sa.text("insert into probe values (1)"))
            assert conn.execute(sa.text("select count(*) from probe")).scalar_one() == 1
    finally:
        engine.dispose()
