"""Tombstones: skipped without a dead letter, never awaited, and their offsets consumed.

A delete (op ``d``) is followed on its partition by a tombstone (its key, a null value)
in the same Kafka transaction. END markers count the delete, not the tombstone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from confluent_kafka import Message

from consumers.assembly import Assembler, Tombstone
from consumers.batch_apply import next_offsets, partitions_of, unapplied
from consumers.intake import Intake
from consumers.markers import EndMarker, EndMarkers
from consumers.offsets import OffsetStore
from consumers.ownership import Ownership
from schemas.avro import AvroCodec

codec = AvroCodec("exigo")
TOPIC = "exigo.customer_sites"
SLOT = ("customer_sites", 0)
NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def _site(cid: int) -> dict[str, Any]:
    return {
        "CustomerID": cid,
        "WebAlias": f"ava{cid}",
        "FirstName": "Ava",
        "LastName": "Lind",
        "Company": None,
        "Address1": "1 Main St",
        "Address2": None,
        "City": "Dallas",
        "State": "TX",
        "Zip": "75001",
        "Country": "US",
        "CreatedDate": NOW,
        "ModifiedDate": NOW,
    }


def _delete_value(cid: int, refresh: str) -> bytes:
    source = {
        "version": "0",
        "connector": "queuestream",
        "name": "exigo",
        "snapshot": "false",
        "db": "sync",
        "schema": None,
        "table": "CustomerSites",
        "system": "exigo",
        "refresh_id": refresh,
        "window_start": None,
        "window_end": None,
    }
    encoder = codec.envelope_encoder("customer_sites", source, 0, refresh)
    return encoder.encode_delete(_site(cid), 1_000, 1, 1)


class _Markers:
    """What the intake asks of the END-marker reader."""

    def need(self, _event_ts_ms: int) -> None:
        return None


def _intake(assembler: Assembler) -> Intake:
    ownership = Ownership(
        {TOPIC: "customer_sites"},
        sa.create_engine("sqlite://"),
        OffsetStore("shipping", "g"),
    )
    ownership.owned.add(SLOT)
    return Intake(
        codec, {TOPIC: "customer_sites"}, ownership, assembler, cast("EndMarkers", _Markers())
    )


def _message(offset: int, value: bytes | None, cid: int = 7) -> Message:
    key = codec.encode("customer_sites", "key", {"CustomerID": cid})
    return Message(topic=TOPIC, partition=0, offset=offset, key=key, value=value, timestamp=(1, 5))


def _end(refresh: str, offset: int, events: int) -> EndMarker:
    return EndMarker(
        refresh, "watermark", event_count=events, offset=offset, partition_counts={SLOT: events}
    )


def test_a_tombstone_is_no_poison_and_the_delete_before_it_completes_the_refresh() -> None:
    assembler = Assembler()
    intake = _intake(assembler)
    intake.take(_message(10, _delete_value(7, "r1")))
    intake.take(_message(11, None))  # the delete's tombstone
    assert assembler.held_events == 1  # the delete: the tombstone is no poison
    assert assembler.tombstones_seen == 1
    batch = assembler.ready({"r1": _end("r1", 3, 1)}, {SLOT}, set())
    assert batch is not None
    assert batch.poison == []  # a tombstone is never a dead letter
    (change,) = batch.refreshes[0][1][SLOT]
    assert (change.op, change.offset, change.row) == ("d", 10, None)
    assert [t.offset for t in batch.tombstones] == [11]
    # The stored offset moves past the tombstone, not only past the delete.
    assert next_offsets(batch) == {(TOPIC, 0): 12}
    assembler.done(batch)
    assert assembler.empty


def test_a_tombstone_read_after_its_refresh_applied_is_consumed_once_the_partition_is_read() -> (
    None
):
    assembler = Assembler()
    intake = _intake(assembler)
    intake.take(_message(10, _delete_value(7, "r1")))
    ends = {"r1": _end("r1", 3, 1)}
    first = assembler.ready(ends, {SLOT}, set())
    assert first is not None and first.tombstones == []
    assembler.done(first)
    intake.take(_message(11, None))
    assert not assembler.empty  # until-idle waits for it
    assert assembler.ready(ends, {SLOT}, set()) is None  # more may come: wait
    alone = assembler.ready(ends, {SLOT}, {SLOT})  # read to its end: a batch of its own
    assert alone is not None
    assert (alone.refreshes, alone.poison) == ([], [])
    assert next_offsets(alone) == {(TOPIC, 0): 12}
    assert partitions_of(alone) == {(TOPIC, 0)}
    assembler.done(alone)
    assert assembler.empty


def test_tombstones_below_the_stored_offsets_are_not_consumed_again() -> None:
    assembler = Assembler()
    assembler.add_tombstone(Tombstone("customer_sites", TOPIC, 0, 4))
    batch = assembler.ready({}, {SLOT}, {SLOT})
    assert batch is not None
    fresh, skipped = unapplied(batch, {(TOPIC, 0): 5})
    assert (fresh.tombstones, skipped) == ([], 0)
    assert next_offsets(fresh) == {}


def test_a_tombstone_read_back_before_the_stored_offset_is_ignored() -> None:
    assembler = Assembler()
    intake = _intake(assembler)
    intake.ownership.start_offset(TOPIC, 0, {(TOPIC, 0): 12})  # reads from 11
    intake.take(_message(11, None))
    assert assembler.empty
