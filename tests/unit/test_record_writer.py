"""The generated record writers against fastavro, the reference: byte for byte on random rows.

Every table's row schema, rows drawn at random: NULLs, integers at and past the
64-bit edges, non-ASCII text, aware timestamps in several zones and naive ones (as
the producer may see them), decimals at the edges of their precision and scale and
past them (refused, by fastavro or by the producer's magnitude check, with an
EncodingError naming the column, as before the generated writers existed).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import fastavro
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from queuestream.errors import EncodingError
from queuestream.tables import TABLES
from schemas.avro import AvroCodec, compiled_writer, row_schema
from schemas.avro.envelope import EnvelopeEncoder, RowEncoder
from schemas.avro.record_writer import (
    Unhandled,
    record_writer,
    timestamp_varint_writer,
    values_writer,
    varint,
)
from schemas.avro.schema_files import load_schema
from schemas.avro.wall_time import wall_micros, wall_micros_in
from tests.unit.compiled_forms import need_built
from tests.unit.test_codec import SOURCE as _SOURCE

_codec = AvroCodec("exigo")
_ZONES = [UTC, ZoneInfo("America/Chicago"), ZoneInfo("Asia/Kolkata"), timezone(timedelta(hours=-3))]
_TABLE_NAMES = [spec.name for spec in TABLES]


def _reference(table: str) -> EnvelopeEncoder:
    """The envelope encoder with fastavro alone (its generated writer taken away; a codec
    of its own: a codec shares its row encoders)."""
    encoder = AvroCodec("exigo").envelope_encoder(table, _SOURCE, 0, "r")
    encoder.rows._fast = None
    return encoder


_FAST = {table: _codec.envelope_encoder(table, _SOURCE, 0, "r") for table in _TABLE_NAMES}


@pytest.fixture(params=["compiled", "python"])
def writer_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The values writers made in the test: the compiled ones (``_cwriter``, which hand the
    Python writer what they leave), then the generated Python ones alone."""
    if request.param == "compiled":
        need_built(compiled_writer.AVAILABLE, "schemas.avro._cwriter")
    else:
        monkeypatch.setattr(compiled_writer, "AVAILABLE", False)
    return str(request.param)


#: A codec per writer form (a codec shares its row encoders, which keep their values
#: writers by column order), and its envelope encoders, kept across examples.
_CODECS: dict[str, AvroCodec] = {}
_FAST_BY_FORM: dict[tuple[str, str], EnvelopeEncoder] = {}


def _codec_of(form: str) -> AvroCodec:
    return _CODECS.setdefault(form, AvroCodec("exigo"))


def _fast(table: str, form: str) -> EnvelopeEncoder:
    """The envelope encoder of ``table`` whose values writers are of ``form``: one per
    table and form, across examples (what its writers keep is checked too)."""
    key = (table, form)
    if key not in _FAST_BY_FORM:
        _FAST_BY_FORM[key] = _codec_of(form).envelope_encoder(table, _SOURCE, 0, "r")
    return _FAST_BY_FORM[key]


def _is_form(writer: Any, form: str) -> bool:
    """Whether ``writer`` is of ``form``: a compiled Program's method, or a Python function."""
    return (type(writer).__name__ == "function") is (form == "python")


def _decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    fits = st.integers(-(10**precision) + 1, 10**precision - 1).map(
        lambda n: Decimal(n).scaleb(-scale)
    )
    edges = st.sampled_from(
        [
            Decimal(10**precision - 1).scaleb(-scale),  # the largest that fits
            -Decimal(10**precision - 1).scaleb(-scale),
            Decimal("-0").scaleb(-scale),
            Decimal("-128").scaleb(-scale),  # two's complement edges
            Decimal("128").scaleb(-scale),
            Decimal("-32768").scaleb(-scale),
            Decimal(10 ** (precision - scale)),  # one digit too many before the point
            Decimal("1E+30"),  # few digits, too large: the producer's own check refuses it
            Decimal(1).scaleb(-scale - 1),  # a finer scale than the column's
            Decimal("NaN"),
            Decimal("-Infinity"),
            Decimal("7"),  # a coarser exponent than the scale
        ]
    )
    coarse = st.integers(-(10 ** (precision - scale)) + 1, 10 ** (precision - scale) - 1).map(
        Decimal
    )
    return st.one_of(fits, edges, coarse)


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
#: hypothesis takes naive bounds, also for aware datetimes.
_LOW, _HIGH = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)
_NAIVE = st.datetimes(
    min_value=_LOW.replace(year=1900, tzinfo=None), max_value=_HIGH.replace(year=2200, tzinfo=None)
)
_AWARE = st.datetimes(
    min_value=_LOW.replace(tzinfo=None),
    max_value=_HIGH.replace(tzinfo=None),
    timezones=st.sampled_from(_ZONES),
)
_INTS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, -1, 1, 63, -64, 64, 8191, -8192, 8192, -(2**31), 2**31 - 1]),
)


def _plain(ftype: Any, odd: bool) -> st.SearchStrategy[Any]:
    if ftype in ("int", "long"):
        odd_ints = st.sampled_from([2**31, -(2**31) - 1, -(2**63), 2**63 - 1, 2**63, True])
        return _INTS | odd_ints if odd else _INTS
    if ftype == "string":
        return _TEXT | st.sampled_from(["\udc80", "a\ud800b"]) if odd else _TEXT
    logical = ftype["logicalType"]
    if logical == "timestamp-micros":
        return _AWARE | _NAIVE if odd else _AWARE
    precision, scale = ftype["precision"], ftype.get("scale", 0)
    return _decimals(precision, scale)


def _rows(table: str, odd: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in row_schema(table)["fields"]:
        ftype = field["type"]
        if isinstance(ftype, list):
            fields[field["name"]] = st.none() | _plain(ftype[1], odd)
        else:
            fields[field["name"]] = _plain(ftype, odd)
    return st.fixed_dictionaries(fields)


def _outcome(encode: Callable[[Any], bytes], row: Any) -> tuple[str, Any]:
    """The bytes ``encode`` writes of ``row`` (a copy), or the column and reason it refuses."""
    try:
        return "bytes", encode(copy.copy(row))
    except EncodingError as exc:
        return "refused", (exc.column, exc.reason)


@pytest.mark.parametrize("table", _TABLE_NAMES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rows_encode_as_fastavro_encodes_them(table: str, data: st.DataObject) -> None:
    """Identical bytes, or the same EncodingError naming the same column."""
    row = data.draw(_rows(table, odd=data.draw(st.booleans())))
    fast = _FAST[table]  # one per table, across examples: what it keeps is checked too
    assert fast.rows._fast is not None  # every row schema is one the generator handles
    assert _outcome(fast.encode_row, row) == _outcome(_reference(table).encode_row, row)


_FIXTURE_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@pytest.mark.parametrize("table", _TABLE_NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE_HEALTH)
@given(data=st.data())
def test_rows_given_as_values_encode_as_the_row_does(
    table: str, writer_form: str, data: st.DataObject
) -> None:
    """A row as its values in any column order (a value more after them, as a snapshot
    reads a row with its CustomerID), as a tuple, a list or another sequence: the bytes,
    or the refusal, of the row as a dict."""
    row = data.draw(_rows(table, odd=data.draw(st.booleans())))
    columns = data.draw(st.permutations(list(row)))
    encode = _fast(table, writer_form).rows.values_encoder(columns)
    values = [row[c] for c in columns] + [data.draw(st.integers())]
    given_as = data.draw(st.sampled_from([tuple, list, _Values]))
    expected = _outcome(_reference(table).encode_row, row)
    assert _outcome(encode, given_as(values)) == expected
    # and what the generated writer writes from the dict, it writes from the values
    by_name, by_position = (
        record_writer(row_schema(table)),
        values_writer(row_schema(table), columns),
    )
    assert by_name is not None
    assert by_position is not None
    assert _is_form(by_position, writer_form)
    try:
        written = by_name(row)
    except (Unhandled, UnicodeError):
        with pytest.raises((Unhandled, UnicodeError)):
            by_position(given_as(values))
        return
    assert by_position(given_as(values)) == written


class _Values(Sequence[Any]):
    """A row's values in a sequence that is neither a tuple nor a list."""

    def __init__(self, values: list[Any]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]


def test_a_row_shorter_than_its_columns_is_refused_alike_by_both_forms() -> None:
    """Past the row's end the compiled writer writes nothing itself: the Python writer
    raises what indexing the row raises."""
    columns = [f["name"] for f in row_schema("payments")["fields"]]
    row = _payment()
    short = tuple(row[c] for c in columns)[:-1]
    for python in (False, True):
        writer = values_writer(row_schema("payments"), columns, UTC, python=python)
        assert writer is not None
        assert writer(tuple(row[c] for c in columns)) == _reference("payments").encode_row(row)
        with pytest.raises(IndexError):
            writer(short)


def test_a_compiled_program_made_without_its_plan_refuses_to_write() -> None:
    """``Program.__new__`` without ``__init__``: a TypeError, not a crash."""
    need_built(compiled_writer.AVAILABLE, "schemas.avro._cwriter")
    from schemas.avro import _cwriter

    program = _cwriter.Program.__new__(_cwriter.Program)
    with pytest.raises(TypeError, match="not initialised"):
        program.write(())


def _decimal_fields(table: str) -> set[str]:
    return {
        f["name"]
        for f in row_schema(table)["fields"]
        for t in (f["type"] if isinstance(f["type"], list) else [f["type"]])
        if isinstance(t, dict) and t.get("logicalType") == "decimal"
    }


@pytest.mark.parametrize("table", [t for t in _TABLE_NAMES if _decimal_fields(t)])
@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE_HEALTH)
@given(data=st.data())
def test_amounts_given_as_their_text_encode_as_their_decimals_do(
    table: str, writer_form: str, data: st.DataObject
) -> None:
    """The producer reads PostgreSQL's amounts as the text the server sends (plain digits,
    never an exponent) and hands that on: a row's values with each amount as its text
    (PostgreSQL's spelling, or Python's) write the bytes of the row with Decimals, or
    are refused naming the same column; fastavro, the reference, is given Decimals."""
    row = data.draw(_rows(table, odd=data.draw(st.booleans())))
    columns = data.draw(st.permutations(list(row)))
    amounts = _decimal_fields(table)
    plain = data.draw(st.booleans())  # PostgreSQL's spelling (no exponent), else Python's

    def spell(amount: Decimal) -> str:
        return format(amount, "f") if plain else str(amount)

    values = [spell(row[c]) if c in amounts and row[c] is not None else row[c] for c in columns]
    assume(any(row[c] is not None for c in amounts))
    got = _outcome(_fast(table, writer_form).rows.values_encoder(columns), values)  # its kept
    expected = _outcome(_reference(table).encode_row, row)
    assert got[0] == expected[0]
    if got[0] == "bytes":
        assert got == expected
    else:
        assert got[1][0] == expected[1][0]  # the column (the reason shows the text read)


def test_text_that_spells_no_amount_is_refused_naming_its_column(writer_form: str) -> None:
    """Not a number's text in an amount: left to fastavro, refused as a str would be."""
    row = _payment(Amount="12,50")
    columns = list(row)
    encode = _fast("payments", writer_form).rows.values_encoder(columns)
    with pytest.raises(EncodingError) as refused:
        encode([row[c] for c in columns])
    assert refused.value.column == "Amount"


@pytest.mark.parametrize("table", _TABLE_NAMES)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_generated_writer_writes_ordinary_rows_itself(table: str, data: st.DataObject) -> None:
    """Rows as the producer sees them (aware timestamps, fitting decimals) never fall back."""
    row = data.draw(_rows(table, odd=False))
    writer = record_writer(row_schema(table))
    assert writer is not None
    parsed = fastavro.parse_schema(row_schema(table), named_schemas={})
    expected = io.BytesIO()
    try:
        fastavro.schemaless_writer(expected, parsed, row)
    except (ValueError, TypeError, OverflowError):
        with pytest.raises(Unhandled):
            writer(row)
        return
    decimals = [
        (row[f["name"]], t["precision"], t.get("scale", 0))
        for f in row_schema(table)["fields"]
        for t in (f["type"] if isinstance(f["type"], list) else [f["type"]])
        if isinstance(t, dict) and t.get("logicalType") == "decimal" and row[f["name"]] is not None
    ]
    try:
        written = writer(row)
    except Unhandled:
        # Only the producer's stricter magnitude check, or a non-finite decimal, may send a
        # row that fastavro writes back to fastavro.
        assert any(
            not value.is_finite() or value.adjusted() + 1 + scale > precision
            for value, precision, scale in decimals
        )
        return
    assert written == expected.getvalue()


@pytest.mark.parametrize("table", _TABLE_NAMES)
@settings(max_examples=200, deadline=None, suppress_health_check=_FIXTURE_HEALTH)
@given(data=st.data())
def test_keys_given_as_a_rows_values_encode_as_fastavro_encodes_them(
    table: str, writer_form: str, data: st.DataObject
) -> None:
    """The key from a row's values by position (``AvroCodec.key_encoder``, what the
    producer publishes) is the key record's bytes as fastavro writes them, framing
    first; a value that does not fit is the same EncodingError as from the record."""
    schema = load_schema(f"{table}.key")
    key = data.draw(
        st.fixed_dictionaries(
            {f["name"]: _plain(f["type"], data.draw(st.booleans())) for f in schema["fields"]}
        )
    )
    row = data.draw(_rows(table, odd=False))
    row.update(key)
    columns = data.draw(st.permutations(list(row)))
    values = [row[c] for c in columns] + [data.draw(st.integers())]  # CustomerID after
    codec = _codec_of(writer_form)
    expected = io.BytesIO()
    try:
        fastavro.schemaless_writer(expected, fastavro.parse_schema(schema, named_schemas={}), key)
    except (ValueError, TypeError, OverflowError):
        with pytest.raises(EncodingError) as refused:
            codec.key_encoder(table, columns)(values)
        assert _outcome(_codec.encoder(table, "key"), key) == (
            "refused",
            (refused.value.column, refused.value.reason),
        )
        return
    written = codec.key_encoder(table, columns)(values)
    assert written == _codec.header(table, "key") + expected.getvalue()
    assert written == _codec.encoder(table, "key")(key)


@given(st.integers(-(2**63), 2**63 - 1))
def test_varint_is_fastavros_long(value: int) -> None:
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, "long", value)
    assert varint(value) == expected.getvalue()


#: Microseconds since the epoch whose zig-zag varint changes length or its high bytes.
_VARINT_EDGES = [(1 << k) // 2 + d for k in (28, 42, 56, 63) for d in (-2, -1, 0, 1)]


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(1_700_000_000_000_000, 1_900_000_000_000_000),  # our time
            st.sampled_from(_VARINT_EDGES + [-v for v in _VARINT_EDGES]),
        ),
        max_size=50,
    ),
    st.booleans(),
    st.integers(12_600_000, 14_200_000),
    st.lists(st.integers(-3, 3), max_size=10),
)
def test_timestamps_close_together_are_written_as_varint_writes_them(
    values: list[int], close: bool, change: int, around: list[int]
) -> None:
    """The timestamp writer keeps the high bytes of the last one: whatever came before,
    in order (as in a refresh) or not, each is written as :func:`varint` writes it. The
    kept bytes change every 2**27 microseconds: ``around`` lie either side of one."""
    values = values + [change * (1 << 27) + d for d in around]
    if close:
        values = sorted(values)
    write = timestamp_varint_writer()
    assert [write(v) for v in values] == [varint(v) for v in values]


def _payment(**changes: Any) -> dict[str, Any]:
    moment = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    row: dict[str, Any] = {
        "PaymentID": 7,
        "CustomerID": 3,
        "OrderID": 10,
        "PaymentTypeID": 1,
        "PaymentDate": moment,
        "Amount": Decimal("18.68"),
        "CurrencyCode": "usd",
        "AuthorizationCode": None,
        "Memo": "ünïcode",
        "CreatedDate": moment,
        "ModifiedDate": moment,
    }
    return {**row, **changes}


def test_an_amount_equal_to_one_written_but_finer_is_refused_as_fastavro_refuses_it(
    writer_form: str,
) -> None:
    """The generated writer looks an amount up among those it wrote by its text: 1.500 is
    not 1.5, which was written (scale 2), but a finer scale, which fastavro refuses."""
    row = _payment()
    fast = _codec_of(writer_form).envelope_encoder("payments", _SOURCE, 0, "r")
    columns = list(row)
    as_text = fast.rows.values_encoder(columns)  # the amount as PostgreSQL's text
    for amount in ("1.5", "1.500", "1.50", "-0.00", "0.000"):
        row["Amount"] = Decimal(amount)
        expected = _outcome(_reference("payments").encode_row, row)
        assert _outcome(fast.encode_row, row) == expected
        for _ in range(2):  # written, then found among the amounts kept
            got = _outcome(as_text, [amount if c == "Amount" else row[c] for c in columns])
            assert got == expected if expected[0] == "bytes" else got[:1] == expected[:1]
    row["Amount"] = Decimal("1.500")
    assert _outcome(fast.encode_row, row)[0] == "refused"
    assert _outcome(as_text, ["1.500" if c == "Amount" else row[c] for c in columns]) == (
        "refused",
        ("Amount", _outcome(fast.encode_row, row)[1][1]),
    )


@pytest.mark.parametrize("length", [0, 63, 64, 8191, 8192, 65535, 65536, 70_000])
def test_strings_of_every_length_class_are_written_as_fastavro_writes_them(length: int) -> None:
    """The generated writer looks a string's length up inline below 8,192 bytes (nullable)
    or 65,536 (not), and writes its varint past that."""
    text = "é" * (length // 2) + "x" * (length % 2)  # two bytes a letter, one for the odd
    row = _payment(CurrencyCode=text, Memo=text)  # not nullable, and nullable
    fast = _codec.envelope_encoder("payments", _SOURCE, 0, "r")
    assert _outcome(fast.encode_row, row) == _outcome(_reference("payments").encode_row, row)


def test_a_value_past_64_bits_is_refused_naming_its_column() -> None:
    """fastavro raises OverflowError for it: an EncodingError like any other misfit."""
    row = _payment()
    assert _outcome(_FAST["payments"].encode_row, row)[0] == "bytes"
    row["PaymentID"] = 2**64
    with pytest.raises(EncodingError) as refused:
        _FAST["payments"].encode_row(row)
    assert refused.value.column == "PaymentID"
    # Past 32 bits fastavro writes a long where the contract says int: refused too.
    for value in (2**31, -(2**31) - 1, 2**40):
        row["PaymentID"] = 7
        row["OrderID"] = value
        with pytest.raises(EncodingError, match="32 bits") as refused:
            _FAST["payments"].encode_row(row)
        assert refused.value.column == "OrderID"


_WALL_ZONES = [
    UTC,
    ZoneInfo("UTC"),  # one offset forever: the zone is not asked (wall_micros_in)
    ZoneInfo("Etc/GMT+5"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("Australia/Lord_Howe"),  # a 30-minute daylight saving shift
    ZoneInfo("Asia/Kolkata"),
    timezone(timedelta(hours=-3)),
]
#: Wall times all over the calendar, and around the daylight saving changes of 2026.
_WALL = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001
    st.datetimes(
        min_value=datetime(2026, 3, 1),  # noqa: DTZ001
        max_value=datetime(2026, 4, 30),  # noqa: DTZ001
    ),
    st.datetimes(
        min_value=datetime(2026, 10, 1),  # noqa: DTZ001
        max_value=datetime(2026, 11, 30),  # noqa: DTZ001
    ),
    st.sampled_from(
        [
            datetime(2026, 11, 1, 1, 30),  # noqa: DTZ001  # New York's repeated hour
            datetime(2026, 11, 1, 1, 30, fold=1),  # noqa: DTZ001
            datetime(2026, 3, 8, 2, 30),  # noqa: DTZ001  # New York's missing hour
            datetime(2026, 10, 25, 2, 30),  # noqa: DTZ001  # Berlin's repeated hour
            datetime(2026, 4, 5, 1, 45),  # noqa: DTZ001  # Lord Howe's repeated half hour
        ]
    ),
)


#: Stamps that repeat, as a refresh's do: New York's repeated 01:30 in both folds, the
#: instants they are (aware, in UTC and in New York), and a microsecond on.
_REPEATED = [
    datetime(2026, 11, 1, 1, 30),  # noqa: DTZ001
    datetime(2026, 11, 1, 1, 30, fold=1),  # noqa: DTZ001
    datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
    datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
    datetime(2026, 11, 1, 1, 30, 0, 1),  # noqa: DTZ001
]


@pytest.mark.parametrize("zone", [ZoneInfo("UTC"), ZoneInfo("America/New_York")], ids=str)
@settings(max_examples=100, deadline=None, suppress_health_check=_FIXTURE_HEALTH)
@given(data=st.data())
def test_stamps_that_repeat_are_each_written_as_fastavro_writes_them(
    zone: Any, writer_form: str, data: st.DataObject
) -> None:
    """A writer keeps the last stamp it wrote for the next one equal to it (a new row's
    CreatedDate is its ModifiedDate; an order's lines share its stamps). Row after row
    of stamps drawn from a few, in both folds of a repeated hour and aware beside
    naive, each row is still what fastavro writes of it, by either of its writers."""
    rows = RowEncoder("orders", zone)  # its own: nothing kept from another test
    fields = row_schema("orders")["fields"]
    columns = [field["name"] for field in fields]
    stamps = [field["name"] for field in fields if "timestamp" in str(field["type"])]
    by_values = rows.values_encoder(columns)
    reference = _reference("orders").rows
    for _ in range(data.draw(st.integers(min_value=2, max_value=8))):
        row = data.draw(_rows("orders", odd=False))
        for name in stamps:
            if row[name] is not None:
                row[name] = data.draw(st.sampled_from(_REPEATED))
        aware = {
            k: v.replace(tzinfo=zone) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()
        }
        expected = _outcome(reference.encode_row, aware)
        assert _outcome(rows.encode_row, row) == expected
        assert _outcome(lambda r: by_values([r[c] for c in columns]), row) == expected


#: Row encoders with a wall zone, by table, zone and writer form, kept across examples.
_WALL_ROWS: dict[tuple[str, Any, str], RowEncoder] = {}


@pytest.mark.parametrize("table", ["orders", "payments"])
@pytest.mark.parametrize("zone", _WALL_ZONES, ids=str)
@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE_HEALTH)
@given(data=st.data())
def test_naive_wall_times_encode_as_their_aware_selves(
    table: str, zone: Any, writer_form: str, data: st.DataObject
) -> None:
    """A producer's rows carry the source's naive wall times: written with the zone, from
    the row or from its values, they are byte for byte what fastavro writes of
    ``value.replace(tzinfo=zone)``."""
    row = data.draw(_rows(table, odd=False))
    stamps = [f["name"] for f in row_schema(table)["fields"] if "timestamp" in str(f["type"])]
    for name in stamps:
        if row[name] is not None or data.draw(st.booleans()):
            row[name] = data.draw(_WALL)
    aware = {
        k: v.replace(tzinfo=zone) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in row.items()
    }
    wall = _codec.envelope_encoder(table, _SOURCE, 0, "r", wall_zone=zone)
    expected = _outcome(_reference(table).encode_row, aware)
    assert _outcome(wall.encode_row, row) == expected
    columns = list(row)
    rows = _WALL_ROWS.setdefault((table, zone, writer_form), RowEncoder(table, zone))
    by_values = rows.values_encoder(columns)
    assert _outcome(lambda r: by_values(tuple(r[c] for c in columns)), row) == expected
    for name in stamps:
        value = row[name]
        if value is not None:
            assert wall_micros(value, zone) == wall_micros(aware[name], UTC)
            assert wall_micros_in(zone)(value) == wall_micros(value, zone)
            assert wall_micros_in(zone)(aware[name]) == wall_micros(aware[name], UTC)
            assert wall_micros(value, zone) == (aware[name] - datetime(1970, 1, 1, tzinfo=UTC)) // (
                timedelta(microseconds=1)
            )
