"""Promise 4: Java-compatible murmur2 and co-partitioning by CustomerID."""

from __future__ import annotations

import io

import fastavro
import pytest

from producer.partitioning import (
    CustomerPartitioner,
    customer_key_bytes,
    murmur2,
    partition_for,
)
from schemas.avro import load_schema

# Vectors from Kafka's UtilsTest.testMurmur2 (checked against Utils.murmur2 of kafka-clients 4.3.1).
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"": 275646681,
}


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_positive_modulo() -> None:
    # toPositive(-973932308) % 6 as Java computes it.
    assert partition_for(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6


@pytest.mark.parametrize("customer_id", [0, 1, 63, 64, 8191, 123456, 2**31 - 1])
def test_customer_key_bytes_are_the_avro_body_of_the_customer_key(customer_id: int) -> None:
    schema = fastavro.parse_schema(load_schema("customers.key"))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, {"CustomerID": customer_id})
    assert customer_key_bytes(customer_id) == buffer.getvalue()


def test_partitioner_caches_and_agrees() -> None:
    partitioner = CustomerPartitioner(6)
    for customer in range(1, 500):
        assert partitioner(customer) == partition_for(customer_key_bytes(customer), 6)
    assert len({partitioner(c) for c in range(1, 500)}) == 6
