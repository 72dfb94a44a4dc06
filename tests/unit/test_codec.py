"""The Avro codec: single-object framing, caching, the fast envelope encoder, and errors that
name the column."""

from __future__ import annotations

import http.server
import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from queuestream.errors import ConfigurationError, DecodeError, EncodingError, RetriableError
from queuestream.tables import TABLES
from schemas.avro import (
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    encode_long,
    load_schema,
    row_schema,
    schema_names,
)
from schemas.avro.misfit import find_misfit
from tests.services import free_ports

codec = AvroCodec("exigo")


def _order(**overrides: Any) -> dict[str, Any]:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    row = {
        "OrderID": 10,
        "CustomerID": 3,
        "OrderStatusID": 2,
        "OrderTypeID": 1,
        "OrderDate": now,
        "CurrencyCode": "usd",
        "WarehouseID": 1,
        "ShipMethodID": 1,
        "SubTotal": Decimal("10.00"),
        "TaxTotal": Decimal("0.73"),
        "ShippingTotal": Decimal("7.95"),
        "Total": Decimal("18.68"),
        "CreatedDate": now,
        "ModifiedDate": now,
    }
    row.update(overrides)
    return row


def _envelope(after: dict[str, Any]) -> dict[str, Any]:
    return {
        "before": None,
        "after": after,
        "op": "c",
        "ts_ms": 1,
        "source": {
            "version": "0",
            "connector": "queuestream",
            "name": "exigo",
            "ts_ms": 1,
            "db": "x",
            "table": "Orders",
            "system": "exigo",
            "refresh_id": "r1",
        },
    }


def test_every_table_has_a_key_and_value_schema() -> None:
    names = set(schema_names())
    for spec in TABLES:
        assert {f"{spec.name}.key", f"{spec.name}.value"} <= names
    assert {"batches.key", "batches.value"} <= names


def test_single_object_header_is_the_little_endian_fingerprint() -> None:
    data = codec.encode("orders", "key", {"OrderID": 5})
    canonical = to_parsing_canonical_form(load_schema("orders.key"))
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    assert codec.decode("orders", "key", data) == {"OrderID": 5}


def test_value_round_trip_keeps_decimals_exact_and_times_aware() -> None:
    value = codec.decode("orders", "value", codec.encode("orders", "value", _envelope(_order())))
    assert value is not None
    assert value["after"]["Total"] == Decimal("18.68")
    assert value["after"]["OrderDate"] == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert value["after"]["TrackingNumber1"] is None


@pytest.mark.parametrize(
    ("override", "column", "reason"),
    [
        ({"Total": Decimal("123456789012345678.00")}, "Total", "precision"),
        ({"CurrencyCode": "\ud800"}, "CurrencyCode", "surrogates"),
        ({"CustomerID": None}, "CustomerID", "NULL"),
    ],
)
def test_encoding_errors_name_the_column(
    override: dict[str, Any], column: str, reason: str
) -> None:
    with pytest.raises(EncodingError) as caught:
        codec.encode("orders", "value", _envelope(_order(**override)))
    assert caught.value.column == column
    assert caught.value.table == "orders"
    assert reason in str(caught.value)


def test_decode_errors_keep_the_raw_bytes() -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode("orders", "value", b"not avro at all")
    assert caught.value.raw == b"not avro at all"
    unknown = SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"\x02"
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        codec.decode("orders", "key", unknown)


def test_tombstones_decode_to_none() -> None:
    assert codec.decode("orders", "value", None) is None


SOURCE = {
    "version": "0.1.0",
    "connector": "queuestream",
    "name": "exigo",
    "snapshot": "false",
    "db": "sync",
    "schema": None,
    "table": "Orders",
    "system": "exigo",
    "refresh_id": "r-1",
    "window_start": datetime(2026, 11, 22, tzinfo=UTC),
    "window_end": None,
}


def test_envelope_encoder_is_byte_identical_to_a_full_encode() -> None:
    source = SOURCE
    fast = codec.envelope_encoder(
        "orders", source, published_ms=1_795_000_000_000, transaction_id="r-1"
    )
    row = _order(TrackingNumber1="1Z999", Notes="ünïcode")
    full = {
        "before": None,
        "after": row,
        "op": "u",
        "ts_ms": 1_795_000_000_000,
        "source": {**source, "ts_ms": 1_795_000_000_123},
        "transaction": {"id": "r-1", "total_order": 70_000, "data_collection_order": 3},
    }
    expected = codec.encode("orders", "value", full)
    assert fast.encode(row, "u", 1_795_000_000_123, 70_000, 3) == expected
    row_bytes = fast.encode_row(row)
    assert fast.encode_from_row_bytes(row_bytes, "u", 1_795_000_000_123, 70_000, 3) == expected


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["c", "u", "r"]),
            st.one_of(
                st.integers(1_795_000_000_000, 1_795_000_600_000),  # a refresh's, close
                st.integers(-(2**62), 2**62),
                st.sampled_from([-1, 0, 1_795_000_000_000]),  # again and again
            ),
            st.one_of(st.integers(0, 70_000), st.integers(1, 2**40)),
            st.one_of(st.integers(0, 70_000), st.integers(1, 2**40)),
        ),
        max_size=12,
    ),
)
def test_change_events_one_after_another_are_byte_identical_to_full_encodes(
    events: list[tuple[str, int, int, int]],
) -> None:
    """Change events written from parts joined once per refresh, one after another: each
    is what encoding the whole envelope writes."""
    fast = codec.envelope_encoder(
        "orders", SOURCE, published_ms=1_795_000_000_000, transaction_id="r-1"
    )
    row = _order(TrackingNumber1="1Z999")
    row_bytes = fast.encode_row(row)
    for op, ts_ms, total, order in events:
        full = {
            "before": None,
            "after": row,
            "op": op,
            "ts_ms": 1_795_000_000_000,
            "source": {**SOURCE, "ts_ms": ts_ms},
            "transaction": {"id": "r-1", "total_order": total, "data_collection_order": order},
        }
        written = fast.encode_from_row_bytes(row_bytes, op, ts_ms, total, order)
        assert written == codec.encode("orders", "value", full)


@pytest.mark.parametrize("table", [t.name for t in TABLES])
def test_a_delete_is_byte_identical_to_a_full_encode(table: str) -> None:
    """op d: ``before`` the row, ``after`` null; from the row or from its kept bytes."""
    source = {**SOURCE, "table": table}
    fast = codec.envelope_encoder(
        table, source, published_ms=1_795_000_000_000, transaction_id="r-2"
    )
    row = _sample_row(table)
    full = {
        "before": row,
        "after": None,
        "op": "d",
        "ts_ms": 1_795_000_000_000,
        "source": {**source, "ts_ms": 1_795_000_000_456},
        "transaction": {"id": "r-2", "total_order": 12, "data_collection_order": 300},
    }
    expected = codec.encode(table, "value", full)
    assert fast.encode_delete(row, 1_795_000_000_456, 12, 300) == expected
    kept = fast.encode_row(row)  # what the producer keeps for a published row
    assert fast.encode_delete_from_row_bytes(kept, 1_795_000_000_456, 12, 300) == expected
    decoded = codec.decode(table, "value", expected)
    upsert = codec.decode(table, "value", fast.encode(row, "u", 0, 1, 1))
    assert decoded is not None and upsert is not None
    assert (decoded["op"], decoded["after"]) == ("d", None)
    assert decoded["before"] == upsert["after"]


def _sample_row(table: str) -> dict[str, Any]:
    """A row of ``table`` with every column set (strings, numbers, instants)."""
    now = datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    row: dict[str, Any] = {}
    for field in row_schema(table)["fields"]:
        kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
        kind = next(k for k in kinds if k != "null")
        if isinstance(kind, dict) and kind.get("logicalType") == "timestamp-micros":
            row[field["name"]] = now
        elif isinstance(kind, dict) and kind.get("logicalType") == "decimal":
            row[field["name"]] = Decimal(1).scaleb(-kind["scale"]) * 1234
        elif kind == "string":
            row[field["name"]] = f"{field['name']} ü"
        elif kind in ("int", "long"):
            row[field["name"]] = 42
        elif kind == "boolean":
            row[field["name"]] = True
        else:
            row[field["name"]] = 1.5
    return row


def test_envelope_encoder_names_the_column() -> None:
    fast = codec.envelope_encoder("orders", SOURCE, 0, "r")
    with pytest.raises(EncodingError) as caught:
        fast.encode(_order(Total=Decimal("1e30")), "c", 0, 1, 1)
    assert caught.value.column == "Total"


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_a_nan_amount_is_named_with_a_plain_reason(amount: str) -> None:
    fast = codec.envelope_encoder("orders", SOURCE, 0, "r")
    with pytest.raises(EncodingError) as caught:
        fast.encode(_order(Total=Decimal(amount)), "c", 0, 1, 1)
    assert caught.value.column == "Total"
    assert caught.value.reason == (
        f"{Decimal(amount)} is not a number a decimal column can hold: fix the value in the source"
    )
    with pytest.raises(EncodingError) as full:
        codec.encode("orders", "value", _envelope(_order(Total=Decimal(amount))))
    assert (full.value.column, full.value.reason) == ("Total", caught.value.reason)
    assert "concatenate" not in str(full.value)


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 300, 2**31, -(2**63), 2**63 - 1])
def test_encode_long_is_avros_zigzag_varint(value: int) -> None:
    written = io.BytesIO()
    fastavro.schemaless_writer(written, fastavro.parse_schema("long"), value)
    assert encode_long(value) == written.getvalue()


def test_the_misfit_named_is_the_rows_column_inside_the_envelope() -> None:
    column, reason = find_misfit(load_schema("orders.value"), _envelope(_order(CustomerID=None)))
    assert (column, reason) == ("CustomerID", "NULL in a column that is not nullable")
    column, reason = find_misfit(row_schema("orders"), _order(CurrencyCode=7))
    assert column == "CurrencyCode"
    assert "7" in reason
    assert find_misfit(row_schema("orders"), _order()) == (
        None,
        "the record does not match its schema",
    )


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` and ``body`` (an HTML page)."""

    def _answer(self) -> None:
        server: Any = self.server
        self.send_response(server.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(server.body)))
        self.end_headers()
        self.wfile.write(server.body)

    do_GET = do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def web_page() -> Iterator[Any]:
    """A web server that is not a schema registry (status and body settable)."""
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.status, server.body = 404, b"<html><body><h1>Not Found</h1></body></html>"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "kind", "says"),
    [
        (404, ConfigurationError, "answered HTTP 404: an answer that is not a schema registry's"),
        (200, ConfigurationError, "answered with something that is not a schema registry's JSON"),
        (401, ConfigurationError, "check the user name and password in schema_registry_url"),
    ],
)
def test_a_url_that_answers_but_not_as_a_registry_is_a_setting_to_fix(
    web_page: Any, status: int, kind: type[Exception], says: str
) -> None:
    web_page.status = status
    registry = AvroCodec.from_url("exigo", f"http://qs:hunter2@127.0.0.1:{web_page.server_port}/")
    with pytest.raises(kind) as caught:
        registry.encode("customers", "key", {"CustomerID": 1})
    message = str(caught.value)
    assert message.startswith(f"schema registry at http://qs:***@127.0.0.1:{web_page.server_port}/")
    assert says in message
    assert "hunter2" not in message
    assert "<html>" not in message


def test_a_registry_that_is_down_is_an_outage_also_when_decoding() -> None:
    (port,) = free_ports(1)
    url = f"http://qs:hunter2@127.0.0.1:{port}"
    # The client's own retries (about 3 s here) are not what is tested.
    registry = AvroCodec("exigo", SchemaRegistryClient({"url": url, "max.retries": 0}), url)
    with pytest.raises(RetriableError) as caught:
        registry.encode("customers", "key", {"CustomerID": 1})
    assert str(caught.value).startswith(
        f"schema registry at http://qs:***@127.0.0.1:{port} is unreachable ("
    )
    framed = b"\x00" + (7).to_bytes(4, "big") + b"\x02"  # schema id 7: asks the registry
    with pytest.raises(RetriableError):  # not a DecodeError: the message may be fine
        registry.decode("customers", "key", framed)


def test_the_registry_clients_request_log_shows_no_password(
    web_page: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = AvroCodec.from_url("exigo", f"http://qs:hunter2@127.0.0.1:{web_page.server_port}/")
    with caplog.at_level(logging.INFO), pytest.raises(ConfigurationError):
        registry.encode("customers", "key", {"CustomerID": 1})
    # The first request asks for the subject's compatibility level (GET /config/...).
    assert "HTTP Request: GET http://qs:***@127.0.0.1:" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_registry_url_the_client_rejects_is_a_setting_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AvroCodec.from_url("exigo", "qs:hunter2@localhost:8081")
    assert str(caught.value).startswith("schema_registry_url ***@localhost:8081 is not a registry")
