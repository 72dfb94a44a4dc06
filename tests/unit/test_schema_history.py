"""The schema history: every current .avsc released in it, every version readable by the others.

The first two tests guard the contract: a changed .avsc without its history entry
(``make schema-history``) fails the first, a change that a consumer on an earlier
version (or a later one) cannot read fails the second. The others check the record
command and the codec's reading of single-object messages by their fingerprint.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest

from consumers.changes import _NEEDED as CHANGE
from queuestream.errors import DecodeError, SchemaError
from schemas.avro import SCHEMA_DIR, SINGLE_OBJECT_MAGIC, AvroCodec, load_schema, schema_names
from schemas.avro.fast_reader import project
from schemas.avro.history import (
    HISTORY_DIR,
    fingerprint_of,
    history,
    incompatibility,
)
from schemas.avro.record_history import main, record
from schemas.avro.schema_files import row_record
from tests.unit.test_codec import _envelope, _order

RELEASED = history()


@pytest.mark.parametrize("stem", schema_names())
def test_every_current_schema_is_in_the_history(stem: str) -> None:
    hexed = fingerprint_of(load_schema(stem))
    assert hexed in RELEASED.get(stem, {}), (
        f"{stem}.avsc ({hexed}) is not in {HISTORY_DIR}: run `make schema-history` "
        "(python -m schemas.avro.history) and commit the new entry"
    )


@pytest.mark.parametrize("stem", schema_names())
def test_the_current_schema_reads_every_released_one_and_they_read_it(stem: str) -> None:
    current = load_schema(stem)
    for hexed, released in RELEASED[stem].items():
        assert incompatibility(current, released) is None, f"BACKWARD: {stem} reads {hexed}"
        assert incompatibility(released, current) is None, f"FORWARD: {hexed} reads {stem}"


def test_history_holds_only_current_stems() -> None:
    assert set(RELEASED) == set(schema_names())


# -- a contract with a column added -------------------------------------------------------
def _with_column(schema: dict[str, Any], column: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an envelope) with ``column`` appended to its row record."""
    changed = copy.deepcopy(schema)
    row_record(changed)["fields"].append(column)
    return changed


GIFT = {"name": "GiftMessage", "type": ["null", "string"], "default": None}
NEWER = _with_column(load_schema("orders.value"), GIFT)


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    """A copy of the current .avsc files and their history."""
    folder = tmp_path / "avro"
    folder.mkdir()
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, folder)
    shutil.copytree(HISTORY_DIR, folder / "history")
    return folder


def test_record_adds_a_nullable_column_once(contract: Path) -> None:
    assert record(contract, contract / "history") == []
    (contract / "orders.value.avsc").write_text(json.dumps(NEWER))
    written = record(contract, contract / "history")
    assert written == [contract / "history" / "orders.value" / f"{fingerprint_of(NEWER)}.avsc"]
    assert json.loads(written[0].read_text()) == NEWER
    assert record(contract, contract / "history") == []  # idempotent
    assert len(history(contract / "history")["orders.value"]) == 2


@pytest.mark.parametrize(
    ("column", "direction"),
    [
        ({"name": "GiftMessage", "type": "string"}, "BACKWARD"),  # no default: old rows lack it
        ({"name": "GiftMessage", "type": ["null", "string"]}, "BACKWARD"),
    ],
)
def test_record_refuses_a_column_without_a_default(
    contract: Path, column: dict[str, Any], direction: str
) -> None:
    (contract / "orders.value.avsc").write_text(json.dumps(_with_column(NEWER, column)))
    with pytest.raises(SchemaError, match=f"orders.value.avsc .* not {direction} compatible"):
        record(contract, contract / "history")
    assert main([str(contract)]) == 1
    assert len(history(contract / "history")["orders.value"]) == 1  # nothing written


def test_record_refuses_a_changed_type(contract: Path) -> None:
    changed = copy.deepcopy(load_schema("orders.key"))
    changed["fields"][0]["type"] = "string"
    (contract / "orders.key.avsc").write_text(json.dumps(changed))
    with pytest.raises(SchemaError, match="not BACKWARD compatible"):
        record(contract, contract / "history")


def test_a_history_file_named_for_another_schema_is_refused(contract: Path) -> None:
    entry = next((contract / "history" / "orders.key").glob("*.avsc"))
    entry.rename(entry.with_name("0000000000000000.avsc"))
    with pytest.raises(SchemaError, match=f"rename it {entry.stem}.avsc"):
        history(contract / "history")


# -- the codec reading single-object messages by fingerprint ------------------------------
def _single_object(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema, named_schemas={}), record)
    return SINGLE_OBJECT_MAGIC + bytes.fromhex(fingerprint_of(schema)) + buffer.getvalue()


@pytest.fixture(scope="module")
def event() -> dict[str, Any]:
    """A whole change event, as the current codec reads one back (every field filled in)."""
    codec = AvroCodec("exigo")
    read = codec.decode("orders", "value", codec.encode("orders", "value", _envelope(_order())))
    assert read is not None
    return read


def test_a_newer_writer_is_read_with_its_history_folder(
    contract: Path, event: dict[str, Any]
) -> None:
    """A consumer on the released contract reads a newer producer's events once it has
    their history folder; without it, the fingerprint is unknown (a DecodeError)."""
    (contract / "orders.value.avsc").write_text(json.dumps(NEWER))
    record(contract, contract / "history")
    after = {**event["after"], "GiftMessage": "with love"}
    data = _single_object(NEWER, {**event, "after": after})

    with pytest.raises(DecodeError, match=f"unknown schema fingerprint {fingerprint_of(NEWER)}"):
        AvroCodec("exigo").decode("orders", "value", data)

    codec = AvroCodec("exigo", history=[contract / "history"])
    assert codec.decode("orders", "value", data) == event  # the reader's shape: no GiftMessage
    assert codec.decode("orders", "value", data, CHANGE) == project(event, CHANGE)


def test_an_older_writer_is_read_from_the_history(
    monkeypatch: pytest.MonkeyPatch, event: dict[str, Any]
) -> None:
    """A consumer on a newer contract (a column added) reads the released contract's events:
    their writer schema found by fingerprint in the history, the new column its default."""
    import schemas.avro.codec as codec_module

    def newer(stem: str) -> Any:
        return codec_module._Schema(stem, NEWER if stem == "orders.value" else load_schema(stem))

    monkeypatch.setattr(codec_module, "_schema", newer)
    codec = AvroCodec("exigo")
    data = _single_object(load_schema("orders.value"), event)
    assert codec.decode("orders", "value", data) == {
        **event,
        "after": {**event["after"], "GiftMessage": None},
    }
    projected = codec.decode("orders", "value", data, CHANGE)
    assert projected is not None
    assert projected["after"]["GiftMessage"] is None

    monkeypatch.setattr(codec_module, "_released", lambda extra: {})  # no history: refused
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        AvroCodec("exigo").decode("orders", "value", data)


def test_a_missing_history_folder_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        AvroCodec("exigo", history=[tmp_path / "nowhere"])
