"""Promise 9 on the producing side: deletes reach Kafka, and the sweep makes the stream converge.

Against the real broker: a line removed while its order changes is deleted in the same
refresh (op d with the line as published in ``before``, then a tombstone, counted by the
END marker); the state of what was published survives the loss of its local cache; a
sweep finds a deleted customer, rows stamped before the watermark (one written by a
SQLite transaction held past the window) and rows changed without a new ModifiedDate,
each exactly once, and a second pass finds nothing; compaction of a change topic with
the producer's tombstones leaves the deleted key absent and every other key's latest value.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Message, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from producer.published_state import state_path
from queuestream.batches import read_last_end
from queuestream.sync_schema import Base
from queuestream.tables import topic_for
from schemas.avro import AvroCodec
from tests.integration.kafka_readback import committed_changes, committed_messages, located
from tests.integration.pipeline import Pipeline

Values = list[tuple[str, int, dict[str, Any]]]

#: Compaction as soon as the broker's log cleaner looks (every 2 s on the test broker:
#: scripts/kafka-local.sh log.cleaner.backoff.ms), tombstones kept no longer than that.
COMPACT_NOW = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.001",
    "delete.retention.ms": "100",
    "min.compaction.lag.ms": "0",
}
COMPACTION_TIMEOUT = 90.0  # seconds for the cleaner to drop the deleted key's values


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _order_with_lines(pipeline: Pipeline, at_least: int = 2) -> tuple[int, list[int]]:
    details = Base.metadata.tables["OrderDetails"]
    with pipeline.source.connect() as conn:
        order = conn.execute(
            sa.select(details.c.OrderID)
            .group_by(details.c.OrderID)
            .having(sa.func.count() >= at_least)
            .order_by(details.c.OrderID)
            .limit(1)
        ).scalar_one()
        lines = conn.execute(
            sa.select(details.c.OrderLine)
            .where(details.c.OrderID == order)
            .order_by(details.c.OrderLine)
        ).scalars()
        return int(order), [int(line) for line in lines]


def _deletes(values: Values, table: str) -> list[dict[str, Any]]:
    return [v for t, _p, v in values if t == table and v["op"] == "d"]


def _last_published(values: Values, table: str, key: dict[str, Any]) -> dict[str, Any]:
    images = [
        v["after"]
        for t, _p, v in values
        if t == table
        and v["after"] is not None
        and all(v["after"][k] == want for k, want in key.items())
    ]
    assert images, f"{table} {key} was never published"
    last: dict[str, Any] = images[-1]
    return last


def _tombstone_follows(pipeline: Pipeline, table: str, delete: Message) -> None:
    topic, partition, offset = located(delete)
    after = [
        m
        for m in committed_messages(pipeline.bootstrap, [topic])
        if located(m)[1] == partition and located(m)[2] > offset
    ]
    assert after, "no tombstone after the delete"
    assert after[0].key() == delete.key() and after[0].value() is None


def _delete_message(pipeline: Pipeline, table: str) -> Message:
    topic = topic_for(pipeline.prefix, table)
    codec = AvroCodec.from_url(pipeline.prefix, pipeline.settings().schema_registry_url)
    for message in committed_messages(pipeline.bootstrap, [topic]):
        if message.value() is None:
            continue
        value = codec.decode(table, "value", message.value())
        if value is not None and value["op"] == "d":
            return message
    msg = f"no delete in {topic}"
    raise AssertionError(msg)


def _consume_and_verify(pipeline: Pipeline, tmp_path: Path) -> None:
    """Both sample targets apply everything published so far and equal the source."""
    for name in ("accounting", "shipping"):
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        stats = pipeline.consume(name, url)
        assert stats.errors == 0, name
        report = pipeline.verify(name, url)
        assert report.ok, [c for c in report.checks if not c.ok]


def test_a_line_removed_while_its_order_changes_is_deleted_in_the_same_refresh(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.simulate(200)
    pipeline.refresh()
    _consume_and_verify(pipeline, tmp_path)
    order, lines = _order_with_lines(pipeline)
    removed = lines[0]
    published_before, values_before = committed_changes(pipeline.bootstrap, pipeline.prefix)
    image = _last_published(
        values_before, "order_details", {"OrderID": order, "OrderLine": removed}
    )
    # The producer's machine is lost: its cache of what it published goes with it.
    settings = pipeline.settings()
    state_path(settings).unlink()

    with pipeline.source.begin() as conn:
        conn.execute(
            sa.text('DELETE FROM "OrderDetails" WHERE "OrderID" = :o AND "OrderLine" = :l'),
            {"o": order, "l": removed},
        )
        conn.execute(
            sa.text('UPDATE "Orders" SET "ModifiedDate" = :now WHERE "OrderID" = :o'),
            {"o": order, "now": _now()},
        )
    [result] = pipeline.refresh()

    assert result.op_counts.get("order_details.d") == 1
    _, values = committed_changes(pipeline.bootstrap, pipeline.prefix)
    [delete] = _deletes(values, "order_details")
    assert delete["after"] is None
    assert delete["before"] == image  # the line as it was published, from the changelog
    assert delete["source"]["refresh_id"] == result.refresh_id
    _tombstone_follows(pipeline, "order_details", _delete_message(pipeline, "order_details"))
    # The END counts the delete, not its tombstone: what a consumer waits for.
    end = read_last_end(settings, AvroCodec.from_url(pipeline.prefix, settings.schema_registry_url))
    assert end.marker is not None and end.marker.refresh_id == result.refresh_id
    assert end.marker.op_counts["order_details.d"] == 1
    assert end.marker.counts["order_details"] == sum(
        1
        for t, _p, v in values
        if t == "order_details" and v["source"]["refresh_id"] == result.refresh_id
    )
    # The other lines of the order are not deleted.
    assert {d["before"]["OrderLine"] for d in _deletes(values, "order_details")} == {removed}

    # Nothing more to delete: a refresh that touches the order again deletes nothing.
    with pipeline.source.begin() as conn:
        conn.execute(
            sa.text('UPDATE "Orders" SET "ModifiedDate" = :now WHERE "OrderID" = :o'),
            {"o": order, "now": _now()},
        )
    [again] = pipeline.refresh()
    assert "order_details.d" not in again.op_counts
    # The targets take the delete: the invoice and the shipment lose the line.
    _consume_and_verify(pipeline, tmp_path)
    assert published_before  # (the first refresh published)


def test_a_refused_new_line_does_not_hide_a_removed_one(pipeline: Pipeline) -> None:
    """An order gets a new line that cannot be encoded (a dead letter) and loses another:
    the lost line is still deleted. The refresh asks the state for the lines it holds
    beyond those the refresh wrote, first by counting them; the refused line is not
    written, and counting it as written would hide the lost one."""
    pipeline.more["max_errors"] = 5
    pipeline.simulate(200)
    pipeline.refresh()
    order, lines = _order_with_lines(pipeline)
    removed, kept = lines[0], lines[-1]
    details = Base.metadata.tables["OrderDetails"]
    copied = [c.name for c in details.c if c.name not in ("OrderLine", "ItemDescription")]
    now = _now()
    with pipeline.source.begin() as conn:
        conn.execute(
            sa.text('DELETE FROM "OrderDetails" WHERE "OrderID" = :o AND "OrderLine" = :l'),
            {"o": order, "l": removed},
        )
        # Invalid UTF-8: SQLite stores it, Avro cannot encode it.
        columns = ", ".join(f'"{c}"' for c in copied)
        conn.execute(
            sa.text(
                f'INSERT INTO "OrderDetails" ("OrderLine", "ItemDescription", {columns}) '
                f"SELECT :new, CAST(X'EDA080' AS TEXT), {columns} "
                'FROM "OrderDetails" WHERE "OrderID" = :o AND "OrderLine" = :l'
            ),
            {"o": order, "l": kept, "new": max(lines) + 1},
        )
        for table in ("OrderDetails", "Orders"):  # every line of the order is read again
            conn.execute(
                sa.text(f'UPDATE "{table}" SET "ModifiedDate" = :now WHERE "OrderID" = :o'),
                {"o": order, "now": now},
            )
    [result] = pipeline.refresh()

    assert result.dead_letters == {"order_details": 1}
    assert result.op_counts.get("order_details.d") == 1
    _, values = committed_changes(pipeline.bootstrap, pipeline.prefix)
    assert {d["before"]["OrderLine"] for d in _deletes(values, "order_details")} == {removed}


def _payment(payment: int, customer: int, order: int, stamp: datetime, memo: str) -> sa.Insert:
    return (
        Base.metadata.tables["Payments"]
        .insert()
        .values(
            PaymentID=payment,
            CustomerID=customer,
            OrderID=order,
            PaymentTypeID=1,
            PaymentDate=stamp,
            Amount=Decimal("12.34"),
            CurrencyCode="USD",
            Memo=memo,
            CreatedDate=stamp,
            ModifiedDate=stamp,
        )
    )


def _hold_a_write(
    pipeline: Pipeline, owner: tuple[int, int], held: threading.Event, done: threading.Event
) -> None:
    """A SQLite writer that stamps a payment now and commits only once ``done`` is set."""
    engine = sa.create_engine(pipeline.source_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.execute(_payment(900001, owner[0], owner[1], _now(), "held"))
            held.set()
            done.wait(30)
            conn.exec_driver_sql("COMMIT")
    finally:
        engine.dispose()


def test_the_sweep_finds_what_refreshes_cannot_each_exactly_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.more["overlap_seconds"] = 1
    pipeline.simulate(200)
    pipeline.refresh()
    customers = Base.metadata.tables["Customers"]
    orders = Base.metadata.tables["Orders"]
    with pipeline.source.connect() as conn:
        first = conn.execute(sa.select(orders.c.CustomerID, orders.c.OrderID).limit(1)).one()
        owner = (int(first[0]), int(first[1]))
        others = conn.execute(
            sa.select(customers.c.CustomerID)
            .where(customers.c.CustomerID != owner[0])
            .order_by(customers.c.CustomerID)
            .limit(3)
        ).scalars()
        gone, *quiet = (int(i) for i in others)
        doomed_order = int(
            conn.execute(
                sa.select(orders.c.OrderID)
                .where(orders.c.OrderID != owner[1])
                .order_by(orders.c.OrderID.desc())
                .limit(1)
            ).scalar_one()
        )
        payments = Base.metadata.tables["Payments"]
        doomed_payments = [
            int(p)
            for p in conn.execute(
                sa.select(payments.c.PaymentID).where(payments.c.OrderID == doomed_order)
            ).scalars()
        ]
        lines = int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(Base.metadata.tables["OrderDetails"])
                .where(sa.column("OrderID") == doomed_order)
            ).scalar_one()
        )

    # A write held open past the refresh that should have carried it.
    held, done = threading.Event(), threading.Event()
    writer = threading.Thread(target=_hold_a_write, args=(pipeline, owner, held, done))
    writer.start()
    assert held.wait(30)
    time.sleep(1.5)  # more than overlap_seconds
    pipeline.refresh()
    done.set()
    writer.join(30)
    pipeline.refresh()  # re-reads only the last second: the held payment is not in it

    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    with pipeline.source.begin() as conn:
        # A customer deleted (with what hangs on it in the source, as a cascade would).
        for table in ("CustomerSites", "CustomerAccounts", "Customers"):
            conn.execute(sa.text(f'DELETE FROM "{table}" WHERE "CustomerID" = :c'), {"c": gone})
        # An order deleted with its lines and payments (nothing touches another row).
        for table in ("Payments", "OrderDetails", "Orders"):
            conn.execute(
                sa.text(f'DELETE FROM "{table}" WHERE "OrderID" = :o'), {"o": doomed_order}
            )
        # A mass update written past the ERP: ModifiedDate untouched.
        conn.execute(
            sa.text('UPDATE "Customers" SET "MainCity" = \'Swept\' WHERE "CustomerID" IN (:a, :b)'),
            {"a": quiet[0], "b": quiet[1]},
        )
        # A payment written by a writer whose clock is two days slow.
        stamp = two_days_ago.replace(tzinfo=None)
        conn.execute(_payment(900002, owner[0], owner[1], stamp, "slow clock"))
    refreshed = pipeline.refresh()
    assert all(not r.events for r in refreshed), "refreshes must not see any of this"

    report = pipeline.sweep()

    assert report.findings["customers"]["deleted"] == 1
    assert report.findings["orders"]["deleted"] == 1
    assert report.findings["order_details"]["deleted"] == lines
    assert report.findings["payments"]["deleted"] == len(doomed_payments)
    assert report.findings["customers"]["repaired"] == 2
    assert report.findings["payments"]["late"] == 2
    assert report.total("late") == 2 and report.total("repaired") == 2
    # the customer (its site and account, when it had them), the order, lines, payments
    assert report.total("deleted") >= 2 + lines + len(doomed_payments)
    published, values = committed_changes(pipeline.bootstrap, pipeline.prefix)
    for payment in (900001, 900002):
        versions = [c for c in published if c[0] == "payments" and c[1] == (payment,)]
        assert len(versions) == 1 and published[versions[0]] == 1, versions
    repaired = [v["after"] for t, _p, v in values if t == "customers" and v["op"] == "r"]
    assert sorted(r["CustomerID"] for r in repaired) == sorted(quiet)
    assert {r["MainCity"] for r in repaired} == {"Swept"}
    [customer_delete] = _deletes(values, "customers")
    assert customer_delete["before"]["CustomerID"] == gone

    # Converged: another pass finds nothing and publishes nothing, and both targets,
    # which apply the repairs at the version they hold, equal the source.
    again = pipeline.sweep()
    assert again.total("deleted") == again.total("late") == again.total("repaired") == 0
    published_again, values_again = committed_changes(pipeline.bootstrap, pipeline.prefix)
    assert published_again == published and len(values_again) == len(values)
    _consume_and_verify(pipeline, tmp_path)


def _latest(pipeline: Pipeline, topic: str) -> dict[tuple[int, bytes], bytes | None]:
    """The latest value of every (partition, key) of ``topic``, as committed readers see it."""
    latest: dict[tuple[int, bytes], bytes | None] = {}
    for message in committed_messages(pipeline.bootstrap, [topic]):
        key = message.key()
        assert isinstance(key, bytes), message
        value = message.value()
        assert value is None or isinstance(value, bytes), message
        latest[(located(message)[1], key)] = value
    return latest


def _compact_now(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in COMPACT_NOW.items()
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_compaction_leaves_the_deleted_key_absent(pipeline: Pipeline) -> None:
    pipeline.simulate(200)
    pipeline.refresh()
    order, lines = _order_with_lines(pipeline)
    with pipeline.source.begin() as conn:
        conn.execute(
            sa.text('DELETE FROM "OrderDetails" WHERE "OrderID" = :o AND "OrderLine" = :l'),
            {"o": order, "l": lines[0]},
        )
        conn.execute(
            sa.text('UPDATE "Orders" SET "ModifiedDate" = :now WHERE "OrderID" = :o'),
            {"o": order, "now": _now()},
        )
    [result] = pipeline.refresh()
    assert result.op_counts.get("order_details.d") == 1
    delete = _delete_message(pipeline, "order_details")
    topic, partition, _ = located(delete)
    deleted = delete.key()
    assert isinstance(deleted, bytes)
    before = _latest(pipeline, topic)
    kept = {where: value for where, value in before.items() if where[1] != deleted}
    assert kept and all(value is not None for value in kept.values())

    _compact_now(pipeline.bootstrap, topic)
    roller = Producer({"bootstrap.servers": pipeline.bootstrap})
    deadline = time.monotonic() + COMPACTION_TIMEOUT
    holding: list[Message] = []
    while time.monotonic() < deadline:
        # The active segment is never cleaned: a record appended after segment.ms rolls it.
        time.sleep(0.5)
        roller.produce(topic, b"segment roll", b"-", partition=partition)
        assert roller.flush(10) == 0, "the record that rolls the segment was not delivered"
        holding = [
            m
            for m in committed_messages(pipeline.bootstrap, [topic])
            if m.key() == deleted and m.value() is not None
        ]
        if not holding:
            break
        time.sleep(2.0)
    assert not holding, (
        f"after {COMPACTION_TIMEOUT:g}s of compaction {topic} still holds {len(holding)} "
        "values of the deleted key: was its tombstone written?"
    )
    # Every other key keeps its latest value; the deleted one has no value left.
    after = _latest(pipeline, topic)
    assert {where: after.get(where) for where in kept} == kept
    assert after.get((partition, deleted)) is None
