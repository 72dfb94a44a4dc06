"""The generated Avro readers against fastavro, the reference: byte for byte, every schema.

Both forms of a reader: the compiled one (:mod:`schemas.avro.compiled_reader`, the C
extension, what the codec uses where it is built) and the generated Python one
(which the compiled one hands malformed input to).

Random records of every schema in schemas/avro/ (keys, change envelopes, the
batches topic's key and marker) and of a schema with the types those do not use
are written with fastavro; the generated reader must return what fastavro's
``schemaless_reader`` returns for the same bytes: the same keys in the same order
and equal values of the same types (a Decimal with the same digits and exponent,
an aware UTC datetime). The strategies cover NULL in every nullable field, both
branches of before/after, decimals at their precision (negative, zero, fewer
decimals than the scale), non-ASCII and empty text, longs at their limits and
instants from year 1 to 9999.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.changes import Change, decode_change, version_of
from queuestream.errors import DecodeError, SchemaError
from schemas.avro import SINGLE_OBJECT_MAGIC, AvroCodec, compiled_reader, load_schema, schema_names
from schemas.avro.fast_reader import Projection, Reader, compile_reader, project
from tests.unit.compiled_forms import need_built
from tests.unit.test_codec import SOURCE

#: The types and shapes the contract's schemas do not use, so that the generator's
#: handling of them is checked too.
OTHER_TYPES: dict[str, Any] = {
    "type": "record",
    "name": "Others",
    "namespace": "test",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": ["null", "double"]},
        {"name": "blob", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "tags", "type": {"type": "map", "values": ["null", "string"]}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["R", "G"]}},
        {"name": "again", "type": ["Colour", "null", "Digest"]},
        {"name": "uuid", "type": {"type": "string", "logicalType": "uuid-ish"}},
        {"name": "wide", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38}},
        {"name": "child", "type": ["null", {"type": "record", "name": "Child", "fields": [
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "note", "type": "string"},
        ]}]},
    ],
}  # fmt: skip
SCHEMAS: dict[str, Any] = {name: load_schema(name) for name in schema_names()}
SCHEMAS["others"] = OTHER_TYPES

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # no lone surrogates
INSTANTS = st.datetimes(timezones=st.just(UTC))  # year 1 to 9999, aware


def _decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    """Values a decimal(precision, scale) holds: up to ``precision`` digits, as many as
    ``scale`` after the point (fewer too: fastavro pads them), negative, zero, the limits."""
    limit = 10**precision - 1

    def value(unscaled: int, fewer: int) -> Decimal:
        return Decimal(unscaled // 10**fewer).scaleb(fewer - scale)

    unscaled = st.one_of(st.integers(-limit, limit), st.sampled_from([0, limit, -limit, 1, -1]))
    return st.builds(value, unscaled, st.integers(0, scale))


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for the values of ``schema`` (parsed by fastavro, names in ``named``)."""
    if isinstance(schema, list):
        return st.one_of([values(branch, named) for branch in schema])
    if isinstance(schema, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "bytes": st.binary(max_size=40),
            "string": TEXT,
        }
        return primitives[schema] if schema in primitives else values(named[schema], named)
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "timestamp-micros":
        return INSTANTS
    if logical == "decimal":
        return _decimals(schema["precision"], schema.get("scale", 0))
    if kind == "record":
        fields = {f["name"]: values(f["type"], named) for f in schema["fields"]}
        return st.fixed_dictionaries(fields)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "map":
        return st.dictionaries(TEXT, values(schema["values"], named), max_size=4)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return values(kind, named)


def same(ours: Any, theirs: Any, where: str = "record") -> None:
    """Equal values of the same types, dicts with their keys in the same order."""
    assert type(ours) is type(theirs), f"{where}: {type(ours)} is not {type(theirs)}"
    if isinstance(ours, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
        for key in ours:
            same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, Decimal):
        assert ours.as_tuple() == theirs.as_tuple(), f"{where}: {ours!r} != {theirs!r}"
    elif isinstance(ours, datetime):
        assert (ours, ours.utcoffset()) == (theirs, theirs.utcoffset()), where
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def _parsed(name: str) -> tuple[Any, dict[str, Any]]:
    named: dict[str, Any] = {}
    return fastavro.parse_schema(SCHEMAS[name], named_schemas=named), named


def _write(parsed: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def _fastavro(parsed: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), parsed)


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _need_compiled() -> None:
    need_built(compiled_reader.AVAILABLE, "schemas.avro._creader")


@pytest.fixture(params=["compiled", "python"])
def make_reader(request: pytest.FixtureRequest) -> Any:
    """``compile_reader`` giving the compiled reader, then the Python one."""
    python = request.param == "python"
    if not python:
        _need_compiled()

    def make(schema: Any, fields: Projection | None = None) -> Reader | None:
        reader = compile_reader(schema, fields, python=python)
        if reader is not None:  # the form asked for, not the other
            assert (type(reader).__name__ == "function") is python
        return reader

    return make


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_generated_reader_returns_what_fastavro_returns(name: str, make_reader: Any) -> None:
    parsed, named = _parsed(name)
    reader = make_reader(SCHEMAS[name])
    assert reader is not None, f"{name}: no generated reader"

    @PROPERTY
    @given(values(parsed, named), st.binary(max_size=3))
    def check(record: Any, before: bytes) -> None:
        data = _write(parsed, record)
        same(reader(before + data, len(before)), _fastavro(parsed, data))

    check()


ENVELOPES = [n for n in schema_names() if n.endswith(".value") and n != "batches.value"]
CHANGE = Projection(
    "op", "after", before=Projection("ModifiedDate"), source=Projection("ts_ms", "refresh_id")
)


@pytest.mark.parametrize("name", ENVELOPES)
def test_a_projected_reader_returns_fastavros_record_cut_down(name: str, make_reader: Any) -> None:
    parsed, named = _parsed(name)
    reader = make_reader(SCHEMAS[name], CHANGE)
    assert reader is not None

    @PROPERTY
    @given(values(parsed, named))
    def check(record: Any) -> None:
        data = _write(parsed, record)
        theirs = project(_fastavro(parsed, data), CHANGE)
        same(reader(data, 0), theirs)
        assert list(theirs) == ["before", "after", "source", "op"]

    check()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_nullable_field_null_and_every_field_set(name: str, make_reader: Any) -> None:
    parsed, named = _parsed(name)
    reader = make_reader(SCHEMAS[name])
    assert reader is not None
    for pick in (min, max):  # the first branch (null) everywhere, then the last
        record = _extreme(parsed, named, pick)
        data = _write(parsed, record)
        same(reader(data, 0), _fastavro(parsed, data))


def _extreme(schema: Any, named: dict[str, Any], pick: Any) -> Any:
    """A value with ``pick`` of each union's branch indexes, minimal values elsewhere."""
    if isinstance(schema, list):
        return _extreme(schema[pick(range(len(schema)))], named, pick)
    if isinstance(schema, str):
        plain = {"null": None, "boolean": True, "int": -(2**31), "long": 2**63 - 1}
        more = {"float": 1.5, "double": -0.0, "bytes": b"", "string": "ü€𝄞"}
        found = {**plain, **more}
        return found[schema] if schema in found else _extreme(named[schema], named, pick)
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "timestamp-micros":
        return datetime(1, 1, 1, tzinfo=UTC) if pick is min else datetime(9999, 12, 31, tzinfo=UTC)
    if logical == "decimal":
        return Decimal(-(10 ** schema["precision"] - 1)).scaleb(-schema.get("scale", 0))
    if kind == "record":
        return {f["name"]: _extreme(f["type"], named, pick) for f in schema["fields"]}
    if kind == "enum":
        return pick(schema["symbols"])
    if kind == "map":
        item = _extreme(schema["values"], named, pick)
        return {"": item, "ключ": item} if pick is min else {}
    if kind == "fixed":
        return b"\xff" * schema["size"]
    return _extreme(kind, named, pick)


def test_decimal_bytes_of_any_length_round_as_fastavro_rounds(make_reader: Any) -> None:
    """Bytes another writer may send: more digits than the precision are rounded."""

    @PROPERTY
    @given(st.binary(max_size=24), st.integers(1, 38), st.integers(0, 10))
    def check(unscaled: bytes, precision: int, scale: int) -> None:
        scale = min(scale, precision)
        schema = {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}
        record = {"type": "record", "name": "D", "fields": [{"name": "d", "type": schema}]}
        reader = make_reader(record)
        assert reader is not None
        data = _write(fastavro.parse_schema("bytes"), unscaled)
        same(reader(data, 0), _fastavro(fastavro.parse_schema(record), data))

    check()


@pytest.mark.parametrize("tenth", [0, 1, 2, 0x7F])
def test_a_long_of_ten_bytes_reads_as_the_python_reader_reads_it(
    make_reader: Any, tenth: int
) -> None:
    """Within 64 bits, fastavro's value; past them (a tenth byte above 1, which no Avro
    writer writes) the Python reader's large int, where fastavro wraps around."""
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}
    data = b"\xff" * 9 + bytes([tenth])
    reader, python = make_reader(schema), compile_reader(schema, python=True)
    assert reader is not None and python is not None
    assert reader(data, 0) == python(data, 0)
    if tenth <= 1:
        assert reader(data, 0) == _fastavro(fastavro.parse_schema(schema), data)


def test_a_compiled_program_not_initialised_refuses_to_read() -> None:
    _need_compiled()
    from schemas.avro import _creader

    with pytest.raises(TypeError, match="not initialised"):
        _creader.Program.__new__(_creader.Program).read(b"\x00", 0)
    with pytest.raises(ValueError, match="not a reader plan"):
        _creader.Program(("nothing",), print)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x02\x04\xff\xfe", UnicodeDecodeError),  # a string that is not UTF-8
        (b"\x02\x09", ValueError),  # a negative length
        (b"\x02\x08ab", EOFError),  # the message ends inside the string
        (b"\x06", ValueError),  # union branch 3 of 2
        (b"\x02" + b"\x80" * 10 + b"\x00", None),  # a length of 0 in eleven bytes
    ],
)
def test_the_compiled_reader_hands_what_it_cannot_read_to_the_python_one(
    make_reader: Any, data: bytes, error: type[Exception] | None
) -> None:
    """Malformed input raises what the Python reader raises (the compiled one gives it
    over); a varint longer than 64 bits, which only the Python reader reads, is read."""
    schema = {"type": "record", "name": "S", "fields": [{"name": "s", "type": ["null", "string"]}]}
    reader, python = make_reader(schema), compile_reader(schema, python=True)
    assert reader is not None and python is not None
    if error is None:
        assert reader(data, 0) == python(data, 0) == {"s": ""}
        return
    with pytest.raises(error):
        python(data, 0)
    with pytest.raises(error):
        reader(data, 0)


codec = AvroCodec("exigo")


@pytest.mark.parametrize("name", [n for n in schema_names()])
def test_every_cut_short_message_is_a_decode_error_carrying_its_bytes(name: str) -> None:
    table, field = name.rsplit(".", 1)
    parsed, named = _parsed(name)
    data = codec.header(table, field) + _write(parsed, _extreme(parsed, named, max))
    for end in range(len(data)):
        with pytest.raises(DecodeError) as caught:
            codec.decode(table, field, data[:end])
        assert caught.value.raw == data[:end]


def test_bytes_after_the_record_are_ignored_as_fastavro_ignores_them() -> None:
    parsed, named = _parsed("orders.value")
    record = _extreme(parsed, named, max)
    data = codec.header("orders", "value") + _write(parsed, record)
    decoded = codec.decode("orders", "value", data + b"\x00garbage")
    same(decoded, _fastavro(parsed, data[10:] + b"\x00garbage"))


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\x03", "union branch -2 out of range"),  # before: index -2 (fastavro: from the end)
        (b"\x04", "union branch 2 out of range"),
        (b"\x80\x00\x00\x01", "negative length -1"),  # overlong null, null, a length -1
    ],
)
def test_malformed_indexes_and_lengths_are_decode_errors(body: bytes, says: str) -> None:
    data = codec.header("orders", "value") + body + b"\x00" * 40
    with pytest.raises(DecodeError, match=says):
        codec.decode("orders", "value", data)


class _Registry:
    """A schema registry that knows some schemas by id (what the codec asks of one)."""

    def __init__(self, schemas: dict[int, Any]) -> None:
        self.schemas = schemas

    def get_schema(self, schema_id: int) -> Any:
        return SimpleNamespace(schema_str=json.dumps(self.schemas[schema_id]))


def test_another_writer_schema_is_read_by_fastavro_and_projected_the_same() -> None:
    """An older writer (no ``transaction`` field) is resolved by fastavro, the reader's
    default filled in, the projection cut as the generated reader cuts it; the current
    schema from the registry is read by the generated reader."""
    current = load_schema("orders.value")
    older = {**current, "fields": [f for f in current["fields"] if f["name"] != "transaction"]}
    framed = AvroCodec("exigo", _Registry({1: older, 2: current}))
    parsed, named = _parsed("orders.value")
    record = _extreme(parsed, named, max)
    old = b"\x00" + (1).to_bytes(4, "big") + _write(fastavro.parse_schema(older), record)
    whole = framed.decode("orders", "value", old)
    assert whole is not None
    assert whole["transaction"] is None  # the reader's default
    same(framed.decode("orders", "value", old, CHANGE), project(whole, CHANGE))

    body = _write(parsed, record)
    new = b"\x00" + (2).to_bytes(4, "big") + body
    same(framed.decode("orders", "value", new, CHANGE), project(_fastavro(parsed, body), CHANGE))
    writers = {i: framed._by_fingerprint[b"id" + i.to_bytes(8, "big")] for i in (1, 2)}
    assert (writers[2], CHANGE) in framed._readers  # generated from the registry's copy
    assert not [key for key in framed._readers if key[0] is writers[1]]  # the older: fastavro


def test_the_single_object_path_uses_the_generated_reader() -> None:
    data = codec.encode("orders", "key", {"OrderID": 7})
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert codec.decode("orders", "key", data) == {"OrderID": 7}
    assert (codec._by_fingerprint[data[2:10]], None) in codec._readers  # compiled, cached


def test_a_projection_naming_what_the_schema_lacks_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="has no fields"):
        compile_reader(load_schema("orders.value"), Projection("op", "nope"))
    with pytest.raises(SchemaError, match="not of a record"):
        compile_reader(load_schema("orders.value"), Projection(op=Projection("x")))


@pytest.mark.parametrize("op", ["c", "u", "r", "d"])
def test_decode_change_gives_the_change_a_full_fastavro_decode_gives(op: str) -> None:
    """The projected, generated path and its Change constructor against the plain dataclass
    built from fastavro's whole envelope, as decode_change built it before."""
    fast = codec.envelope_encoder("orders", {**SOURCE, "table": "Orders"}, 1_795_000_000_000, "r-9")
    parsed, named = _parsed("orders.value")
    row = _extreme(parsed, named, max)["after"]
    value = (
        fast.encode_delete(row, 1_795_000_000_456, 7, 8)
        if op == "d"
        else fast.encode(row, op, 1_795_000_000_456, 7, 8)
    )
    key = codec.encode("orders", "key", {"OrderID": row["OrderID"]})
    change = decode_change(
        codec,
        "orders",
        topic="exigo.orders",
        partition=2,
        offset=40,
        timestamp_ms=5,
        raw_key=key,
        raw_value=value,
    )
    envelope = _fastavro(parsed, value[10:])
    image = envelope["before"] if op == "d" else envelope["after"]
    expected = Change(
        "orders",
        op,
        _fastavro(fastavro.parse_schema(load_schema("orders.key")), key[10:]),
        None if op == "d" else envelope["after"],
        version_of(image["ModifiedDate"]),
        "r-1",  # source.refresh_id
        "exigo.orders",
        2,
        40,
        5,
        key,
        value,
    )
    assert change == expected
    assert type(change) is Change
    same(change.row, expected.row)
