"""Java-compatible partitioning, co-partitioned by CustomerID (promise 4).

``murmur2`` is Kafka's ``Utils.murmur2`` bit for bit, and ``partition_for`` is
``Utils.toPositive(murmur2(bytes)) % partitions``, what Kafka's Java producer
does for a keyed record. The bytes hashed for every table are the Avro binary
body of the customer key ``{"CustomerID": id}``, so a customer's row, sites,
accounts, orders, order lines and payments all land on the same partition
number of their topics, whatever the wire format.
"""

from __future__ import annotations

from schemas.avro import encode_long

__all__ = ["CustomerPartitioner", "customer_key_bytes", "murmur2", "partition_for"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` as a signed 32-bit int (like Java's)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def partition_for(data: bytes, partitions: int) -> int:
    """The partition Kafka's Java producer picks for a record whose key is ``data``."""
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def customer_key_bytes(customer_id: int) -> bytes:
    """Avro binary of ``{"CustomerID": customer_id}`` (a zig-zag varint)."""
    data: bytes = encode_long(customer_id)
    return data


class CustomerPartitioner:
    """Maps a CustomerID to its partition; caches, since customers repeat."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[int, int] = {}

    def __call__(self, customer_id: int) -> int:
        found = self._cache.get(customer_id)
        if found is None:
            found = partition_for(customer_key_bytes(customer_id), self.partitions)
            if len(self._cache) < 1_000_000:
                self._cache[customer_id] = found
        return found
