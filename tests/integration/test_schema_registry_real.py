"""confluent-kafka's SchemaRegistryClient + AvroSerializer against a real registry.

The registry is Apicurio Registry's Confluent-compatible API (/apis/ccompat/v7), started by
scripts/registry-local.sh on a free port of its own for this test session (in-memory storage,
stopped afterwards). Set SCHEMA_REGISTRY_URL to use an already running registry instead.
Skipped when neither that variable is set nor java and mvn are available.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "registry-local.sh"

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _script(cmd: str, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPT), cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(f"registry-local.sh {cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    env_url = os.environ.get("SCHEMA_REGISTRY_URL")
    if env_url:
        yield env_url
        return
    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.skip("no SCHEMA_REGISTRY_URL and no java/mvn to start a local registry")
    env = {**os.environ, "REGISTRY_PORT": str(_free_port()), "REGISTRY_OWNER_PID": str(os.getpid())}
    _script("fetch", timeout=1200, env=env)
    url = _script("up", timeout=180, env=env).splitlines()[-1]
    try:
        yield url
    finally:
        _script("down", timeout=60, env=env)


@pytest.fixture
def client(registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


@pytest.fixture
def topic() -> str:
    return f"qs-it-{uuid.uuid4().hex[:12]}"


def test_serialize_roundtrip_uses_confluent_framing(
    client: SchemaRegistryClient, registry_url: str, topic: str
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
    fresh = SchemaRegistryClient({"url": registry_url})
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
