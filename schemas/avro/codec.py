"""Encode and decode queuestream's keys and values with the schemas in this folder.

Two wire formats:

* Avro single-object encoding (no registry configured): ``C3 01``, the 8-byte
  little-endian CRC-64-AVRO fingerprint of the writer schema's canonical form,
  then the Avro binary body. Any Avro library can decode it with the .avsc files.
* Confluent Schema Registry framing (registry URL configured): ``00``, the
  4-byte big-endian schema id, then the body; schemas are registered under
  ``<topic>-key`` / ``<topic>-value``, each subject at BACKWARD compatibility at least
  (:mod:`.registry`).

What is asked of the registry, and how its failures are told apart, is
:mod:`.registry`. Its failures pass through :meth:`AvroCodec.decode` as they are: a
registry that is down is not a message that cannot be decoded.

A single-object message written with a schema other than the current file's (an
earlier or later contract) is read with the released schema of its fingerprint
(:mod:`.history`), resolved against the current one, as a registry-framed message
is read with the schema its id names; an unknown fingerprint is a DecodeError.

Each schema is parsed once and cached. The schema files themselves are
:mod:`.schema_files`; the fast encoder of a refresh's change events, which
:meth:`AvroCodec.envelope_encoder` hands out, is :mod:`.envelope`; the readers
generated per writer schema that :meth:`AvroCodec.decode` uses when the writer's
schema is the reader's are :mod:`.fast_reader` (fastavro reads the rest).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import tzinfo
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from queuestream.errors import DecodeError, EncodingError, QueuestreamError
from schemas.avro.envelope import EnvelopeEncoder, RowEncoder
from schemas.avro.fast_reader import Projection, Reader, ValueCache, compile_reader, project
from schemas.avro.history import writer_schemas
from schemas.avro.misfit import WRITE_ERRORS, find_misfit
from schemas.avro.record_writer import Unhandled, record_writer, values_writer
from schemas.avro.registry import SchemaRegistry
from schemas.avro.schema_files import load_schema, schema_names

__all__ = ["SINGLE_OBJECT_MAGIC", "AvroCodec"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_Record = Callable[[bytes, int], dict[str, Any]]  # a Reader of a record schema
_CONFLUENT_MAGIC = 0


class _Schema:
    """One parsed schema with its single-object header."""

    __slots__ = ("canonical", "header", "json", "parsed", "stem")

    def __init__(self, stem: str, schema: dict[str, Any], *, framed: bool = True) -> None:
        """``schema`` (the JSON) of ``stem``; ``framed``: with its single-object header
        (a writer's schema from the registry has none: its messages carry an id)."""
        self.stem = stem
        self.json = schema
        self.parsed = fastavro.parse_schema(schema, named_schemas={})
        self.canonical = to_parsing_canonical_form(schema)
        self.header = (
            SINGLE_OBJECT_MAGIC + bytes.fromhex(fingerprint(self.canonical, "CRC-64-AVRO"))
            if framed
            else b""
        )


@cache
def _schema(stem: str) -> _Schema:
    return _Schema(stem, load_schema(stem))


@cache
def _released(extra: tuple[Path, ...]) -> dict[bytes, tuple[str, dict[str, Any]]]:
    """The writer schemas of the history (and of ``extra`` folders), by fingerprint."""
    return writer_schemas(extra)


class AvroCodec:
    """Encoder and decoder for every queuestream topic of one topic prefix.

    ``registry`` is a :class:`.registry.SchemaRegistry` (or a confluent_kafka
    SchemaRegistryClient, wrapped in one), or None for single-object encoding.
    ``history`` adds folders of writer schemas (laid out as :mod:`.history`) to the
    released ones that single-object messages are looked up in.
    """

    def __init__(
        self,
        prefix: str,
        registry: Any = None,
        registry_url: str = "",
        history: Iterable[Path] = (),
    ) -> None:
        self.prefix = prefix
        self._history = tuple(Path(folder).resolve() for folder in history)
        self.registry = (
            registry
            if registry is None or isinstance(registry, SchemaRegistry)
            else SchemaRegistry(registry, registry_url)
        )
        self._encoders: dict[str, Callable[[dict[str, Any]], bytes]] = {}
        self._key_encoders: dict[tuple[str, tuple[str, ...]], Callable[[Sequence[Any]], bytes]] = {}
        #: One row encoder per table and zone: its generated writers are made once, not
        #: for every refresh.
        self._row_encoders: dict[tuple[str, tzinfo | None], RowEncoder] = {}
        self._headers: dict[str, bytes] = {}
        self._by_fingerprint: dict[bytes, _Schema] = {}
        #: Generated readers by writer schema and projection (None: that one is fastavro's),
        #: compiled at first use, sharing one cache of the datetimes and decimals they make.
        self._readers: dict[tuple[_Schema, Projection | None], Reader | None] = {}
        self._values = ValueCache()
        #: (table, field, fields) -> the framing of the last message decoded by a generated
        #: reader (magic and fingerprint or schema id), the body's offset, that reader.
        self._routes: dict[tuple[str, str, Projection | None], tuple[bytes, int, _Record]] = {}
        for stem in schema_names():
            parsed = _schema(stem)
            self._by_fingerprint[parsed.header[2:]] = parsed
        if self._history:
            _released(self._history)  # a folder that is not one fails here, not at a message

    @classmethod
    def from_url(
        cls, prefix: str, registry_url: str | None, history: Iterable[Path] = ()
    ) -> AvroCodec:
        registry = SchemaRegistry.connect(registry_url) if registry_url else None
        return cls(prefix, registry, history=history)

    # -- encoding ---------------------------------------------------------------
    def encoder(self, table: str, field: str) -> Callable[[dict[str, Any]], bytes]:
        """A function that encodes ``table``'s ``key`` or ``value`` records.

        A flat record (keys, say) is written by the writer generated from its schema
        (:mod:`.record_writer`), byte-identical to fastavro, which writes what it leaves.

        Raises EncodingError naming the column when a value does not fit.
        """
        stem = f"{table}.{field}"
        found = self._encoders.get(stem)
        if found is None:
            found = self._make_encoder(table, field)
            self._encoders[stem] = found
        return found

    def encode(self, table: str, field: str, record: dict[str, Any]) -> bytes:
        return self.encoder(table, field)(record)

    def key_encoder(self, table: str, columns: Sequence[str]) -> Callable[[Sequence[Any]], bytes]:
        """:meth:`encoder` of ``table``'s key for a row given as its values in the order
        of ``columns`` (a row as read): the same bytes and the same EncodingError, with no
        dict made of the key but for a value the generated writer leaves to fastavro."""
        columns = tuple(columns)
        cached = (table, columns)
        found = self._key_encoders.get(cached)
        if found is not None:
            return found
        header = self.header(table, "key")
        by_dict = self.encoder(table, "key")
        fast = values_writer(_schema(f"{table}.key").json, columns)

        def encode(values: Sequence[Any]) -> bytes:
            if fast is not None:
                try:
                    return header + fast(values)
                except Unhandled:
                    pass  # a value the generated writer leaves to fastavro
            return by_dict(dict(zip(columns, values, strict=False)))

        self._key_encoders[cached] = encode
        return encode

    def _make_encoder(self, table: str, field: str) -> Callable[[dict[str, Any]], bytes]:
        schema = _schema(f"{table}.{field}")
        header = self.header(table, field)
        body = _body_writer(schema, header)
        fast = record_writer(schema.json)  # None for a schema it does not handle

        def encode(record: dict[str, Any]) -> bytes:
            if fast is not None:
                try:
                    return header + fast(record)
                except Unhandled:
                    pass  # a value the generated writer leaves to fastavro
            try:
                return body(record)
            except WRITE_ERRORS as exc:
                column, reason = find_misfit(schema.json, record)
                raise EncodingError(reason, table=table, column=column) from exc

        return encode

    def header(self, table: str, field: str) -> bytes:
        """The bytes before the Avro body: single-object header or Confluent framing."""
        stem = f"{table}.{field}"
        found = self._headers.get(stem)
        if found is None:
            schema = _schema(stem)
            if self.registry is None:
                found = schema.header
            else:
                from confluent_kafka.schema_registry import Schema

                subject = f"{self.prefix}.{table}-{field}"
                schema_id = self.registry.register(subject, Schema(json.dumps(schema.json), "AVRO"))
                found = bytes([_CONFLUENT_MAGIC]) + int(schema_id).to_bytes(4, "big")
            self._headers[stem] = found
        return found

    def envelope_encoder(
        self,
        table: str,
        source: dict[str, Any],
        published_ms: int,
        transaction_id: str,
        wall_zone: tzinfo | None = None,
    ) -> EnvelopeEncoder:
        """A fast encoder of ``table``'s change events for one refresh (see EnvelopeEncoder);
        ``wall_zone``: the zone of the rows' naive timestamps."""
        return EnvelopeEncoder(
            table,
            self.header(table, "value"),
            source,
            published_ms,
            transaction_id,
            self.row_encoder(table, wall_zone),
        )

    def row_encoder(self, table: str, wall_zone: tzinfo | None = None) -> RowEncoder:
        """``table``'s row encoder for rows whose naive timestamps are wall times in
        ``wall_zone``: one per table and zone, so its generated writers are made once."""
        rows = self._row_encoders.get((table, wall_zone))
        if rows is None:
            rows = self._row_encoders[table, wall_zone] = RowEncoder(table, wall_zone)
        return rows

    # -- decoding ---------------------------------------------------------------
    def decode(
        self, table: str, field: str, data: bytes | None, fields: Projection | None = None
    ) -> dict[str, Any] | None:
        """Decode a key or value of ``table``; None stays None (a tombstone).

        ``fields`` keeps only some fields (see :class:`.fast_reader.Projection`): a
        caller that needs a few values of an envelope skips building the rest.
        Written with the reader's own schema (the same parsing canonical form), the
        message is read by a reader generated from the writer's schema; written with
        another schema (an older or newer version) by fastavro, which resolves one
        against the other. Both return the same (a property test checks). Raises
        DecodeError carrying the raw bytes when they cannot be read.
        """
        if data is None:
            return None
        route = self._routes.get((table, field, fields))
        if route is not None and data.startswith(route[0]):  # the writer of the last message
            try:
                return route[2](data, route[1])
            except Exception as exc:
                raise _undecodable(table, field, data, exc) from exc
        return self._decode(table, field, data, fields)

    def _decode(
        self, table: str, field: str, data: bytes, fields: Projection | None
    ) -> dict[str, Any]:
        """:meth:`decode` of a message whose writer is not the last one's: find it."""
        reader = _schema(f"{table}.{field}")
        try:
            writer = self._writer_schema(data, reader)
            offset = 10 if data[:2] == SINGLE_OBJECT_MAGIC else 5
            if writer is reader or writer.canonical == reader.canonical:
                fast = self._reader(writer, fields)
                if fast is not None:
                    self._routes[(table, field, fields)] = (data[:offset], offset, fast)
                    return cast("dict[str, Any]", fast(data, offset))
            record = fastavro.schemaless_reader(
                io.BytesIO(data[offset:]), writer.parsed, reader.parsed
            )
        except QueuestreamError:
            raise  # the codec's own DecodeError, or the registry failing (not the message)
        except Exception as exc:
            raise _undecodable(table, field, data, exc) from exc
        return cast("dict[str, Any]", project(record, fields))

    def _reader(self, writer: _Schema, fields: Projection | None) -> Reader | None:
        """The generated reader of ``fields`` of ``writer``, compiled at first use."""
        key = (writer, fields)
        if key not in self._readers:
            self._readers[key] = compile_reader(writer.json, fields, self._values)
        return self._readers[key]

    def _writer_schema(self, data: bytes, reader: _Schema) -> _Schema:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._released_schema(bytes(data[2:10]), reader, data)
        if data[:1] == bytes([_CONFLUENT_MAGIC]) and len(data) >= 5:
            if self.registry is None:
                reason = "Confluent-framed message but no schema registry is configured"
                raise DecodeError(reason, table=reader.stem, raw=data)
            schema_id = int.from_bytes(data[1:5], "big")
            return self._registry_schema(schema_id)
        reason = "not Avro: neither single-object (C3 01) nor Confluent (00) framing"
        raise DecodeError(reason, table=reader.stem, raw=data)

    def _released_schema(self, fingerprint: bytes, reader: _Schema, data: bytes) -> _Schema:
        """The writer schema of a single-object message: the reader's own, or a released one.

        Released schemas are the history's (:mod:`.history`) and those of the folders
        given as ``history``; a fingerprint in none of them is a DecodeError (the
        message goes where undecodable messages go).
        """
        found = self._by_fingerprint.get(fingerprint)
        if found is None:
            released = _released(self._history).get(fingerprint)
            if released is None:
                hexed = fingerprint.hex()
                reason = (
                    f"unknown schema fingerprint {hexed}: the writer used a schema that is "
                    f"neither {reader.stem}.avsc nor in the schema history "
                    f"(<stem>/{hexed}.avsc): upgrade queuestream, or add the writer's "
                    "schemas/avro/history folder with schema_history_dir"
                )
                raise DecodeError(reason, table=reader.stem, raw=data)
            found = _Schema(released[0], released[1])
            self._by_fingerprint[fingerprint] = found
        return found

    def _registry_schema(self, schema_id: int) -> _Schema:
        key = schema_id.to_bytes(8, "big")
        found = self._by_fingerprint.get(b"id" + key)
        if found is None:
            assert self.registry is not None  # a Confluent-framed message needs one (checked)
            text = self.registry.schema_text(schema_id)
            found = _Schema(f"registry id {schema_id}", json.loads(text), framed=False)
            self._by_fingerprint[b"id" + key] = found
        return found


def _undecodable(table: str, field: str, data: bytes, exc: Exception) -> DecodeError:
    reason = f"cannot decode {field}: {type(exc).__name__}: {exc}"
    return DecodeError(reason, table=table, raw=data)


def _body_writer(schema: _Schema, header: bytes) -> Callable[[dict[str, Any]], bytes]:
    parsed = schema.parsed
    writer = fastavro.schemaless_writer
    buffer = io.BytesIO()

    def write(record: dict[str, Any]) -> bytes:
        buffer.seek(0)
        buffer.truncate()
        buffer.write(header)
        writer(buffer, parsed, record)
        return buffer.getvalue()

    return write
