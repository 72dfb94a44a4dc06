"""The event contract, read the way a downstream team in another codebase would read it.

queuestream only *produces* here. Everything that reads the topics uses nothing but a
plain confluent_kafka Consumer (read_committed), fastavro and the .avsc files opened by
path from schemas/avro/: writer schemas are found by the CRC-64-AVRO fingerprint in the
single-object header (``C3 01`` + 8 bytes little-endian), exactly as the Avro
specification describes, and every decoded event is checked against the source rows read
with the standard library's sqlite3.

The parametrised round trip sends a random record of every schema through a real topic
with queuestream's AvroCodec, and reads it back with both the codec and that reader; a
delete of every table (op ``d``, ``before`` the row, ``after`` null) from the fast
envelope encoder, with its tombstone, is read back the same way.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import string
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from fastavro.schema import fingerprint, to_parsing_canonical_form

from tests.integration.kafka_readback import committed_messages, located

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "avro"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
#: The Avro specification's test vector (share/test/data/schema-tests.txt): "null".
NULL_SCHEMA_FINGERPRINT = 7195948357588979594
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)

SOURCE_ZONE = "America/Chicago"  # not UTC, so a time-zone slip cannot pass unnoticed
SIM_ACTIONS = 600
PARTITIONS = 3
READ_TIMEOUT = 30.0  # seconds to read all topics back to their ends
ADMIN_TIMEOUT = 15.0

# The contract as a downstream reader knows it (ARCHITECTURE.md, "Event contract").
SOURCE_TABLE = {
    "customers": "Customers",
    "customer_sites": "CustomerSites",
    "customer_accounts": "CustomerAccounts",
    "orders": "Orders",
    "order_details": "OrderDetails",
    "payments": "Payments",
}
PRIMARY_KEY = {
    "customers": ("CustomerID",),
    "customer_sites": ("CustomerID",),
    "customer_accounts": ("CustomerID",),
    "orders": ("OrderID",),
    "order_details": ("OrderID", "OrderLine"),
    "payments": ("PaymentID",),
}
#: Columns masked by default before they leave the source (promise 8).
MASKED = {
    "customer_accounts": {
        "PrimaryCreditCardNumberDisplay",
        "BankAccountNumber",
        "BankRoutingNumber",
    },
}


# --------------------------------------------------------------- an independent decoder --


@cache
def _schema_files() -> dict[str, dict[str, Any]]:
    """``{"orders.value": <json>, ...}`` for every .avsc in schemas/avro/."""
    return {
        path.name.removesuffix(".avsc"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(SCHEMA_DIR.glob("*.avsc"))
    }


class ContractDecoder:
    """Single-object decoding with nothing but fastavro and the schema files."""

    def __init__(self) -> None:
        self.by_fingerprint: dict[bytes, tuple[str, Any]] = {}
        for stem, schema in _schema_files().items():
            canonical = to_parsing_canonical_form(schema)
            digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
            assert digest not in self.by_fingerprint, f"{stem}: fingerprint collision"
            self.by_fingerprint[digest] = (stem, fastavro.parse_schema(schema, named_schemas={}))

    def decode(self, data: bytes | None, expected_stem: str) -> dict[str, Any]:
        assert data is not None, f"{expected_stem}: null payload"
        assert data[:2] == SINGLE_OBJECT_MAGIC, f"{expected_stem}: header {data[:2].hex()}"
        found = self.by_fingerprint.get(bytes(data[2:10]))
        assert found is not None, f"{expected_stem}: unknown fingerprint {data[2:10].hex()}"
        stem, writer = found
        assert stem == expected_stem, f"written with {stem}.avsc, expected {expected_stem}.avsc"
        body = io.BytesIO(data[10:])
        record = fastavro.schemaless_reader(body, writer, None)
        assert body.read() == b"", f"{expected_stem}: bytes left after the record"
        assert isinstance(record, dict)
        return record


def _row_fields(table: str) -> dict[str, Any]:
    """Column name -> non-null Avro type of the row record in ``table``'s envelope."""
    envelope = _schema_files()[f"{table}.value"]
    before = next(f for f in envelope["fields"] if f["name"] == "before")
    record = next(b for b in before["type"] if isinstance(b, dict))
    fields = {}
    for field in record["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        fields[field["name"]] = next(b for b in branches if b != "null")
    return fields


def _expected(column_type: Any, source_value: Any, zone: ZoneInfo) -> Any:
    """What a source value (as sqlite3 returns it) must look like after decoding."""
    if source_value is None:
        return None
    logical = column_type.get("logicalType") if isinstance(column_type, dict) else None
    if logical == "timestamp-micros":
        local = datetime.fromisoformat(source_value)
        assert local.tzinfo is None
        return local.replace(tzinfo=zone)
    if logical == "decimal":
        return Decimal(str(source_value))
    return source_value


def _mask(value: str) -> str:
    return "*" * (len(value) - 4) + value[-4:]


# ----------------------------------------------------------------------------- tests --


def test_spec_fingerprint_byte_order() -> None:
    """fastavro's CRC-64-AVRO hex is the spec's fingerprint, little-endian (as on the wire)."""
    expected = NULL_SCHEMA_FINGERPRINT.to_bytes(8, "little")
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == expected


def _produce_one_refresh(sqlite_url: str, kafka_bootstrap: str, prefix: str) -> Any:
    """The producing side, queuestream's own: simulate activity, run one refresh."""
    from producer.refresh import Refresher
    from producer.simulator import Simulator
    from queuestream.databases import create_engine
    from queuestream.settings import Settings

    settings = Settings(
        source_url=sqlite_url,
        source_timezone=SOURCE_ZONE,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=prefix,
        partitions=PARTITIONS,
        settle_seconds=0,
        schema_registry_url=None,  # single-object encoding even if SCHEMA_REGISTRY_URL is set
    )
    writer = create_engine(sqlite_url, writer=True)
    try:
        Simulator(writer, settings.zone, seed=20261123).run(SIM_ACTIONS, per_transaction=20)
    finally:
        writer.dispose()
    refresher = Refresher(settings)
    try:
        results = refresher.refresh()
    finally:
        refresher.close()
    assert len(results) == 1
    return results[0]


def _source_rows(sqlite_url: str) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    path = sqlite_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        for table, source in SOURCE_TABLE.items():
            rows[table] = {}
            for row in conn.execute(f'SELECT * FROM "{source}"'):
                rows[table][tuple(row[k] for k in PRIMARY_KEY[table])] = dict(row)
        return rows
    finally:
        conn.close()


def test_every_event_decodes_with_fastavro_and_the_schema_files(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    result = _produce_one_refresh(sqlite_url, kafka_bootstrap, unique)
    refresh_id = result.refresh_id
    zone = ZoneInfo(SOURCE_ZONE)
    source = _source_rows(sqlite_url)
    assert all(source[t] for t in SOURCE_TABLE), "the simulation should touch every table"

    # ---- read and decode everything, with no queuestream code ----
    decoder = ContractDecoder()
    topics = {f"{unique}.{table}": table for table in [*SOURCE_TABLE, "batches"]}
    messages = committed_messages(kafka_bootstrap, list(topics), timeout=READ_TIMEOUT)
    events: dict[str, list[tuple[int, int, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    markers: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    for message in messages:
        topic, partition, _ = located(message)
        table = topics[topic]
        key = decoder.decode(message.key(), f"{table}.key")
        value = decoder.decode(message.value(), f"{table}.value")
        _, timestamp = message.timestamp()
        if table == "batches":
            markers.append((timestamp, key, value))
        else:
            events[table].append((partition, timestamp, key, value))

    # ---- counts: one event per changed row, as the refresh reported and END says ----
    read_counts = {table: len(events[table]) for table in SOURCE_TABLE}
    assert read_counts == result.counts
    assert read_counts == {table: len(source[table]) for table in SOURCE_TABLE}

    # ---- BEGIN and END bracket the events ----
    assert [m[2]["status"] for m in markers] == ["BEGIN", "END"]
    (begin_at, begin_key, begin), (end_at, end_key, end) = markers
    assert begin_key == end_key == {"producer": f"queuestream-{unique}"}
    assert begin["refresh_id"] == end["refresh_id"] == refresh_id
    assert end["counts"] == read_counts
    assert end["event_count"] == sum(read_counts.values()) == result.events
    ops = Counter(f"{t}.{v['op']}" for t in SOURCE_TABLE for *_, v in events[t])
    assert end["op_counts"] == dict(ops) == result.op_counts
    placed = Counter(f"{t}:{p}" for t in SOURCE_TABLE for p, *_ in events[t])
    assert end["partition_counts"] == dict(placed)
    assert Counter((t, p) for t in SOURCE_TABLE for p, *_ in events[t]) == result.partition_counts
    assert end["window_end"] == result.window_end
    every = [e for table in SOURCE_TABLE for e in events[table]]
    assert all(begin_at <= timestamp <= end_at for _, timestamp, _, _ in every)
    assert all(begin["ts_ms"] <= v["ts_ms"] <= end["ts_ms"] for *_, v in every)
    assert sorted(v["transaction"]["total_order"] for *_, v in every) == list(
        range(1, len(every) + 1)
    )

    # ---- each event: envelope, key and row against the source ----
    order_customer = {oid: row["CustomerID"] for (oid,), row in source["orders"].items()}
    partitions_of: dict[int, set[int]] = defaultdict(set)
    for table, found in events.items():
        fields = _row_fields(table)
        unseen = dict(source[table])
        for partition, _, key, value in found:
            where = f"{table} {key}"
            assert value["op"] in {"c", "u", "r"}, where
            assert value["op"] == "c", f"{where}: created inside the first window"
            assert value["before"] is None, where
            assert value["source"]["table"] == SOURCE_TABLE[table], where
            assert value["source"]["refresh_id"] == refresh_id, where
            assert value["source"]["window_end"] == result.window_end, where
            assert value["transaction"]["id"] == refresh_id, where
            after = value["after"]
            key_values = tuple(after[k] for k in PRIMARY_KEY[table])
            assert key == dict(zip(PRIMARY_KEY[table], key_values, strict=True)), where
            row = unseen.pop(key_values)  # KeyError: no such row, or a second event for it
            for column, column_type in fields.items():
                expected = _expected(column_type, row[column], zone)
                actual = after[column]
                if column in MASKED.get(table, ()) and expected is not None:
                    expected = _mask(expected)
                assert actual == expected, f"{where}.{column}: {actual!r} != {expected!r}"
                if isinstance(expected, datetime):
                    assert actual.utcoffset() == timedelta(0), f"{where}.{column}: not UTC"
                if isinstance(expected, Decimal):
                    exponent = actual.as_tuple().exponent
                    assert exponent == -column_type["scale"], f"{where}.{column}: {actual!r}"
            modified = _expected(fields["ModifiedDate"], row["ModifiedDate"], zone)
            assert value["source"]["ts_ms"] == (modified - EPOCH) // MILLISECOND, where
            if "CustomerID" in after:
                customer = after["CustomerID"]
            else:
                customer = order_customer[after["OrderID"]]
            partitions_of[customer].add(partition)
        assert not unseen, f"{table}: no event for {sorted(unseen)[:5]}"
        positions = [v["transaction"]["data_collection_order"] for *_, v in found]
        assert sorted(positions) == list(range(1, len(found) + 1)), table
        for number in range(PARTITIONS):  # read order within a partition is publish order
            in_partition = [v["transaction"]["total_order"] for p, *_, v in found if p == number]
            assert in_partition == sorted(in_partition), f"{table} partition {number}"

    # ---- co-partitioning: one partition number per customer across all topics ----
    split = {c: sorted(p) for c, p in partitions_of.items() if len(p) > 1}
    assert not split, f"customers on more than one partition number: {split}"
    assert len({p for ps in partitions_of.values() for p in ps}) > 1, "all on one partition"


# --------------------------------------------------- every schema through a real topic --


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _SampleMaker:
    """A random record for a schema, every union taking a non-null branch."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.named: dict[str, Any] = {}

    def value(self, schema: Any, namespace: str = "") -> Any:
        rng = self.rng
        if isinstance(schema, list):
            branches = [b for b in schema if b != "null"] or ["null"]
            return self.value(rng.choice(branches), namespace)
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            found = self.named.get(schema) or self.named[f"{namespace}.{schema}"]
            return self.value(found, namespace)
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(schema, dict) and kind in {"record", "enum", "fixed"}:
            name = schema["name"]
            namespace = schema.get("namespace", namespace) if "." not in name else ""
            self.named[f"{namespace}.{name}" if namespace else name] = schema
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical == "decimal":
            digits = schema["precision"]
            return Decimal(rng.randrange(-(10**digits) + 1, 10**digits)).scaleb(-schema["scale"])
        if logical == "timestamp-micros":
            start = datetime(2020, 1, 1, tzinfo=UTC)
            return start + timedelta(microseconds=rng.randrange(10**16))
        if logical is not None:
            msg = f"no sample for logical type {logical!r}: extend _SampleMaker"
            raise AssertionError(msg)
        match kind:
            case "record":
                return {f["name"]: self.value(f["type"], namespace) for f in schema["fields"]}
            case "enum":
                return rng.choice(schema["symbols"])
            case "array":
                return [self.value(schema["items"], namespace) for _ in range(2)]
            case "map":
                return {f"k{i}": self.value(schema["values"], namespace) for i in range(2)}
            case "fixed":
                return rng.randbytes(schema["size"])
            case "null":
                return None
            case "boolean":
                return rng.random() < 0.5
            case "int":
                return rng.randrange(-(2**31), 2**31)
            case "long":
                return rng.randrange(-(2**63), 2**63)
            case "float":
                return rng.randrange(-1000, 1000) / 4  # exact in binary32
            case "double":
                return rng.random()
            case "bytes":
                return rng.randbytes(rng.randrange(0, 20))
            case "string":
                return "".join(rng.choices(string.ascii_letters, k=8)) + " Müller ✓"
        msg = f"no sample for Avro type {schema!r}"
        raise AssertionError(msg)


@pytest.fixture(scope="module")
def idempotent_producer(kafka_bootstrap: str) -> Iterator[Producer]:
    """One producer for every round trip: an idempotent producer's start takes ~0.5 s."""
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    try:
        yield producer
    finally:
        producer.flush(ADMIN_TIMEOUT)


@pytest.mark.parametrize("stem", sorted(_schema_files()))
def test_schema_round_trips_through_a_real_topic(
    stem: str, kafka_bootstrap: str, unique: str, idempotent_producer: Producer
) -> None:
    from schemas.avro import AvroCodec

    table, field = stem.split(".")
    sample = _SampleMaker(stem).value(_schema_files()[stem])
    codec = AvroCodec(unique)
    encoded = codec.encode(table, field, sample)

    topic = f"{unique}.{stem}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = NewTopic(topic, num_partitions=1, replication_factor=1)
    admin.create_topics([new], operation_timeout=ADMIN_TIMEOUT)[topic].result(ADMIN_TIMEOUT)
    idempotent_producer.produce(topic, key=uuid.uuid4().bytes, value=encoded)
    assert idempotent_producer.flush(ADMIN_TIMEOUT) == 0, "the sample was not delivered"

    (message,) = committed_messages(kafka_bootstrap, [topic], timeout=READ_TIMEOUT)
    assert message.value() == encoded
    assert codec.decode(table, field, message.value()) == sample
    assert ContractDecoder().decode(message.value(), stem) == sample


@pytest.mark.parametrize("table", sorted(SOURCE_TABLE))
def test_a_delete_and_its_tombstone_read_with_the_schema_files(
    table: str, kafka_bootstrap: str, unique: str, idempotent_producer: Producer
) -> None:
    """op d: ``before`` the row, ``after`` null; then the same key with a null value."""
    from schemas.avro import AvroCodec

    envelope = _schema_files()[f"{table}.value"]
    source_schema = next(f for f in envelope["fields"] if f["name"] == "source")["type"]
    maker = _SampleMaker(f"delete-{table}")
    row = maker.value(next(f for f in envelope["fields"] if f["name"] == "before")["type"])
    source = maker.value(source_schema)
    codec = AvroCodec(unique)
    encoder = codec.envelope_encoder(table, source, 1_795_000_000_000, "r-delete")
    value = encoder.encode_delete(row, 1_795_000_000_999, 7, 3)
    key = codec.encode(table, "key", {k: row[k] for k in PRIMARY_KEY[table]})

    topic = f"{unique}.{table}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = NewTopic(topic, num_partitions=1, replication_factor=1)
    admin.create_topics([new], operation_timeout=ADMIN_TIMEOUT)[topic].result(ADMIN_TIMEOUT)
    idempotent_producer.produce(topic, key=key, value=value)
    idempotent_producer.produce(topic, key=key, value=None)
    assert idempotent_producer.flush(ADMIN_TIMEOUT) == 0, "the delete was not delivered"

    delete, tombstone = committed_messages(kafka_bootstrap, [topic], timeout=READ_TIMEOUT)
    decoder = ContractDecoder()
    decoded = decoder.decode(delete.value(), f"{table}.value")
    assert decoded["op"] == "d"
    assert decoded["before"] == row
    assert decoded["after"] is None
    assert decoded["source"] == {**source, "ts_ms": 1_795_000_000_999}
    assert decoded["transaction"] == {
        "id": "r-delete",
        "total_order": 7,
        "data_collection_order": 3,
    }
    assert tombstone.value() is None
    assert tombstone.key() == delete.key()
    assert decoder.decode(tombstone.key(), f"{table}.key") == {
        k: row[k] for k in PRIMARY_KEY[table]
    }
