"""The event contract as data: one .avsc file per key and value, and the codec that reads them."""

from __future__ import annotations

from schemas.avro.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from schemas.avro.envelope import EnvelopeEncoder, encode_long
from schemas.avro.fast_reader import Projection
from schemas.avro.schema_files import SCHEMA_DIR, load_schema, row_schema, schema_names

__all__ = [
    "SCHEMA_DIR",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "EnvelopeEncoder",
    "Projection",
    "encode_long",
    "load_schema",
    "row_schema",
    "schema_names",
]
