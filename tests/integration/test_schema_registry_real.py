"""Schema registry mode against a real registry: the client, and queuestream's wire format.

The registry is the session fixture ``schema_registry_url`` (tests/conftest.py): Apicurio
Registry's Confluent-compatible API (/apis/ccompat/v7) built and started by
scripts/registry-local.sh (in-memory storage, stopped afterwards), or SCHEMA_REGISTRY_URL.
Without either (no java/mvn), these tests fail: CI never skips a service.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from producer.refresh import Refresher
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.settings import Settings
from queuestream.tables import TABLES, topic_for
from schemas.avro import AvroCodec
from tests.integration.kafka_readback import committed_messages, located

READ_TIMEOUT = 30.0  # seconds to read the topics back to their ends

SCHEMA_V1 = (
    '{"type":"record","name":"OrderChanged","namespace":"queuestream.test","fields":['
    '{"name":"id","type":"string"},{"name":"qty","type":"int"}]}'
)
# BACKWARD-compatible: a new field with a default.
SCHEMA_V2 = SCHEMA_V1.replace(
    '{"name":"qty","type":"int"}]',
    '{"name":"qty","type":"int"},{"name":"note","type":"string","default":""}]',
)
# Not BACKWARD-compatible: qty changes type.
SCHEMA_BAD = SCHEMA_V1.replace('"type":"int"', '"type":"string"')


@pytest.fixture
def client(schema_registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": schema_registry_url})


@pytest.fixture
def topic() -> str:
    return f"qs-it-{uuid.uuid4().hex[:12]}"


def test_serialize_roundtrip_uses_confluent_framing(
    client: SchemaRegistryClient, schema_registry_url: str, topic: str
) -> None:
    ctx = SerializationContext(topic, MessageField.VALUE)
    serializer = AvroSerializer(client, SCHEMA_V1, conf={"auto.register.schemas": True})
    payload = serializer({"id": "o-1", "qty": 3}, ctx)
    assert payload is not None

    subject = f"{topic}-value"  # TopicNameStrategy
    registered = client.get_latest_version(subject)
    assert payload[0] == 0  # magic byte
    assert int.from_bytes(payload[1:5], "big") == registered.schema_id

    # A fresh client (empty cache) must fetch the writer schema by id from the registry.
    fresh = SchemaRegistryClient({"url": schema_registry_url})
    assert AvroDeserializer(fresh)(payload, ctx) == {"id": "o-1", "qty": 3}


def test_register_lookup_and_compatibility(client: SchemaRegistryClient, topic: str) -> None:
    subject = f"{topic}-value"
    sid = client.register_schema(subject, Schema(SCHEMA_V1, "AVRO"))
    assert client.register_schema(subject, Schema(SCHEMA_V1, "AVRO")) == sid  # idempotent
    assert client.lookup_schema(subject, Schema(SCHEMA_V1, "AVRO")).schema_id == sid
    assert subject in client.get_subjects()

    client.set_compatibility(subject, "BACKWARD")
    assert client.test_compatibility(subject, Schema(SCHEMA_V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(SCHEMA_BAD, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(subject, Schema(SCHEMA_BAD, "AVRO"))
    assert err.value.http_status_code == 409

    sid2 = client.register_schema(subject, Schema(SCHEMA_V2, "AVRO"))
    assert sid2 != sid
    assert client.get_versions(subject) == [1, 2]

    assert client.delete_subject(subject) == [1, 2]
    client.delete_subject(subject, permanent=True)
    assert subject not in client.get_subjects()


def test_refresher_publishes_confluent_framed_events(
    schema_registry_url: str, kafka_bootstrap: str, sqlite_url: str, unique: str
) -> None:
    settings = Settings(
        source_url=sqlite_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=unique,
        partitions=2,
        settle_seconds=0,
        schema_registry_url=schema_registry_url,
    )
    writer = create_engine(sqlite_url, writer=True)
    try:
        Simulator(writer, settings.zone, seed=7).run(200, per_transaction=20)
    finally:
        writer.dispose()
    refresher = Refresher(settings)
    try:
        (result,) = refresher.refresh()
    finally:
        refresher.close()

    # Every topic's key and value schema is registered under TopicNameStrategy subjects.
    registry = SchemaRegistryClient({"url": schema_registry_url})
    names = [t.name for t in TABLES] + ["batches"]
    subjects = set(registry.get_subjects())
    schema_ids: dict[tuple[str, str], int] = {}
    for name in names:
        for field in ("key", "value"):
            subject = f"{topic_for(unique, name)}-{field}"
            assert subject in subjects
            schema_id = registry.get_latest_version(subject).schema_id
            assert schema_id is not None
            schema_ids[(topic_for(unique, name), field)] = schema_id

    # Confluent framing on every key and value; a fresh deserializer (empty cache) fetches
    # each writer schema from the registry by the id in the frame.
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    topics = {topic_for(unique, name): name for name in names}
    counts: Counter[str] = Counter()
    markers: list[dict[str, Any]] = []
    for message in committed_messages(kafka_bootstrap, list(topics), timeout=READ_TIMEOUT):
        topic = located(message)[0]
        name = topics[topic]
        decoded = {}
        for field, data, kind in (
            ("key", message.key(), MessageField.KEY),
            ("value", message.value(), MessageField.VALUE),
        ):
            assert data is not None
            assert data[0] == 0, f"{topic} {field}: magic byte {data[0]}"
            assert int.from_bytes(data[1:5], "big") == schema_ids[(topic, field)]
            decoded[field] = deserialize(data, SerializationContext(topic, kind))
        key, value = decoded["key"], decoded["value"]
        if name == "batches":
            assert key == {"producer": f"queuestream-{unique}"}
            markers.append(value)
            continue
        spec = next(t for t in TABLES if t.name == name)
        assert value["source"]["refresh_id"] == result.refresh_id
        assert value["source"]["table"] == spec.source
        assert value["op"] in {"c", "u", "r"}
        assert key == {k: value["after"][k] for k in spec.key}
        counts[name] += 1

    assert dict(counts) == {t: n for t, n in result.counts.items() if n}
    assert all(result.counts.values()), f"every table's schemas exercised: {result.counts}"
    assert [m["status"] for m in markers] == ["BEGIN", "END"]
    assert all(m["refresh_id"] == result.refresh_id for m in markers)
    assert markers[1]["counts"] == result.counts


def test_producers_starting_together_all_register(schema_registry_url: str) -> None:
    """Apicurio may refuse one of several registrations made at once (HTTP 409, "artifact
    already exists" for the very subject being created): producers starting together must
    all start, each with the id of its schema."""
    failures: list[str] = []
    ids: list[bytes] = []

    def start(prefix: str) -> None:
        try:
            ids.append(AvroCodec.from_url(prefix, schema_registry_url).header("orders", "value"))
        except Exception as exc:  # collected: a thread's exception is lost otherwise
            failures.append(f"{type(exc).__name__}: {exc}")

    for _ in range(10):
        threads = [
            threading.Thread(target=start, args=(f"race-{uuid.uuid4().hex[:8]}",)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    assert len(ids) == 40
    assert len(set(ids)) == 1  # one schema: the registry gives every subject its one id
