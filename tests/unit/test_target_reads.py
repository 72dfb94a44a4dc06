"""Targets decode only the columns they read (``Target.reads``), and apply the same;
the version of a decoded change is exact.

The consumer decodes each event with the target's projection (the key, ModifiedDate
and the columns its mapping reads) instead of the whole row. If a target read a
column it did not declare, the projected row would lack it: a value would turn NULL
in the target, or the record would be refused. So each sample target applies the
same simulated events twice, decoded whole and decoded as it declares, to two fresh
targets, and what they hold and what they report must be equal. Every NULL of the
simulated rows is filled first, so that every column carries a value a mapping
could miss.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.accounting import AccountingTarget
from consumers.changes import Change, decode_change, projection, projections, version_of
from consumers.shipping import ShippingTarget
from consumers.target import ApplyReport, Target
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.sync_schema import create_source_schema, source_table
from queuestream.tables import TABLES_BY_NAME
from schemas.avro import AvroCodec
from tests.source_changes import SteppingClock, source_changes
from tests.unit.test_codec import SOURCE  # a source block as the producer writes one

ZONE = ZoneInfo("UTC")
TARGETS = [AccountingTarget(), ShippingTarget()]


def _filled(table: str, row: dict[str, Any], n: int) -> dict[str, Any]:
    """``row`` with each NULL given a value of its column's type."""
    columns = source_table(table).c
    filled = dict(row)
    for name, value in row.items():
        if value is not None:
            continue
        python = columns[name].type.python_type
        if python is str:
            filled[name] = f"{name[:3]}{n}"
        elif python is datetime:
            filled[name] = row["ModifiedDate"]
        elif python is Decimal:
            filled[name] = Decimal("1.25")
        else:
            filled[name] = n % 7 + 1
    return filled


def _events(tmp_path: Path, tables: tuple[str, ...]) -> dict[str, list[bytes]]:
    """The events of a simulated source's rows (NULLs filled), encoded as the producer
    encodes them, by table."""
    source = create_engine(f"sqlite:///{tmp_path / 'source.db'}", writer=True)
    create_source_schema(source)
    Simulator(source, ZONE, seed=5, clock=SteppingClock(datetime(2024, 3, 1, tzinfo=UTC))).run(
        300, per_transaction=10
    )
    codec = AvroCodec("exigo")
    found: dict[str, list[bytes]] = {}
    order = itertools.count()
    for table, changes in source_changes(source, ZONE, tables).items():
        encoder = codec.envelope_encoder(table, SOURCE, 1_795_000_000_000, "r-1")
        found[table] = [
            encoder.encode(_filled(table, dict(c.row or {}), i), "u", 1, next(order), i)
            for i, c in enumerate(changes)
        ]
    source.dispose()
    return found


def _decoded(
    events: dict[str, list[bytes]], reads: Mapping[str, tuple[str, ...]] | None
) -> dict[str, list[Change]]:
    """``events`` decoded as the consumer of a target that ``reads`` decodes them."""
    codec = AvroCodec("exigo")
    key_codec = AvroCodec("exigo")
    found: dict[str, list[Change]] = {}
    for table, values in events.items():
        spec = TABLES_BY_NAME[table]
        fields = projections([table], reads)[table]  # one a table, as the Intake
        changes = []
        for offset, value in enumerate(values):
            envelope = codec.decode(table, "value", value)
            assert envelope is not None
            row = envelope["after"]
            raw_key = key_codec.encode(table, "key", {k: row[k] for k in spec.key})
            changes.append(
                decode_change(
                    codec,
                    table,
                    topic=f"t.{table}",
                    partition=0,
                    offset=offset,
                    timestamp_ms=0,
                    raw_key=raw_key,
                    raw_value=value,
                    fields=fields,
                )
            )
        found[table] = changes
    return found


def _applied(
    target: Target, changes: dict[str, list[Change]], path: Path
) -> tuple[dict[str, Any], ApplyReport]:
    engine = create_engine(f"sqlite:///{path}", writer=True)
    report = ApplyReport()
    with engine.begin() as conn:
        target.create_schema(conn)
        target.apply(conn, changes, report)
    with engine.connect() as conn:  # every column of every table, sorted
        held = {
            name: sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
            for name, table in target.metadata.tables.items()
        }
    engine.dispose()
    return held, report


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_a_target_applies_the_columns_it_reads_as_it_applies_whole_rows(
    target: Target, tmp_path: Path
) -> None:
    assert target.reads is not None, "each sample target says what it reads"
    events = _events(tmp_path, target.tables)
    assert all(len(v) > 10 for v in events.values()), {t: len(v) for t, v in events.items()}
    whole = _decoded(events, None)
    reads = target.reads
    projected = _decoded(events, reads)
    # The projection is in force: a row holds only its key, ModifiedDate and the reads.
    for table, changes in projected.items():
        allowed = {*TABLES_BY_NAME[table].key, "ModifiedDate", *reads[table]}
        assert all(set(c.row or {}) == allowed for c in changes), table
        assert len(allowed) < len(whole[table][0].row or {}), table

    held_whole, report_whole = _applied(target, whole, tmp_path / "whole.db")
    held_projected, report_projected = _applied(target, projected, tmp_path / "projected.db")

    assert sum(len(rows) for rows in held_whole.values()) > 100
    assert held_projected == held_whole
    assert report_projected.applied == report_whole.applied
    assert report_projected.stale == report_whole.stale
    refused = [(r.change.key, r.error.column, r.error.reason) for r in report_whole.rejected]
    assert [
        (r.change.key, r.error.column, r.error.reason) for r in report_projected.rejected
    ] == refused


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_what_a_target_reads_are_columns_of_its_tables(target: Target) -> None:
    assert target.reads is not None
    assert set(target.reads) == set(target.tables)
    for table, columns in target.reads.items():
        names = set(source_table(table).c.keys())
        assert set(columns) <= names, set(columns) - names
        assert len(set(columns)) == len(columns)


def test_whole_rows_for_a_target_that_does_not_say() -> None:
    assert Target.reads is None
    assert projection("orders", None) is projection("payments", None)
    fields = projection("orders", ("Total",)).fields["after"]
    assert fields is not None
    assert list(fields.fields) == ["OrderID", "ModifiedDate", "Total"]


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001 - hypothesis takes naive bounds
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, ZoneInfo("America/Chicago"), ZoneInfo("Asia/Kolkata")]),
    )
)
def test_a_version_is_the_microseconds_since_the_epoch(moment: datetime) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert version_of(moment) == (moment - epoch) // timedelta(microseconds=1)
