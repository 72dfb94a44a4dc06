"""Deletes reach both sample targets through a real broker, into PostgreSQL targets.

The real producer publishes what a simulated source created; then rows of every
table the targets read are deleted in the source (an order with its lines, a
shipped order, a payment, a line removed from an order while the order changes, a
customer whose orders remain with its site and account) and a refresh carrying
their delete events, each followed by its tombstone, is published in one Kafka
transaction between BEGIN and END (:mod:`tests.integration.hand_refresh`, the
contract the producer follows). Both targets must apply the deletes with their
meaning, skip the tombstones (no dead letter, the stored offsets past them), report
what they keep instead of guessing, and verify equal to the source. A rebuild as of
a moment before the deletes and one after them give what the target held then, and
a replay from the earliest offsets over the deletes changes nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from consumers import TARGET_NAMES, target_named
from consumers.rebuild import plan_rebuild, rebuild
from consumers.replay import execute_replay
from consumers.replay_inputs import ReplaySpec
from consumers.replay_plan import plan_replay
from queuestream.sync_schema import source_table
from queuestream.tables import topic_for
from tests.integration.hand_refresh import HandRefresh
from tests.integration.kafka_readback import committed_messages
from tests.integration.pipeline import Pipeline, stored_offsets, target_content
from tests.source_changes import shrink_order

SIM_ACTIONS = 400
SHIPPED, ACCEPTED, PRINTED = 10, 8, 9


def _pick(pipeline: Pipeline, sql: str) -> Any:
    with pipeline.source.connect() as conn:
        found = conn.execute(sa.text(sql)).scalar()
    assert found is not None, f"the simulated source has no row for: {sql}"
    return found


def _delete_some_of_everything(pipeline: Pipeline) -> dict[str, Any]:
    """Delete rows of every table the targets read; publish them as one refresh."""
    hand = HandRefresh(pipeline)
    o, d, p, c = (source_table(t) for t in ("orders", "order_details", "payments", "customers"))
    sites, accounts = source_table("customer_sites"), source_table("customer_accounts")
    picked: dict[str, Any] = {}
    # An open order with lines and a payment: its invoice is voided, its shipment canceled.
    picked["open"] = _pick(
        pipeline,
        "SELECT o.OrderID FROM Orders o WHERE o.OrderStatusID IN (8, 9) AND EXISTS "
        "(SELECT 1 FROM Payments p WHERE p.OrderID = o.OrderID) AND EXISTS "
        "(SELECT 1 FROM OrderDetails d WHERE d.OrderID = o.OrderID) ORDER BY o.OrderID",
    )
    picked["shipped"] = _pick(
        pipeline, "SELECT OrderID FROM Orders WHERE OrderStatusID = 10 ORDER BY OrderID"
    )
    picked["payment"] = _pick(
        pipeline,
        "SELECT PaymentID FROM Payments WHERE OrderID NOT IN "
        f"({picked['open']}, {picked['shipped']}) ORDER BY PaymentID",
    )
    picked["edited"] = _pick(
        pipeline,
        "SELECT OrderID FROM OrderDetails WHERE OrderID NOT IN "
        f"({picked['open']}, {picked['shipped']}) GROUP BY OrderID HAVING COUNT(*) >= 2 "
        "ORDER BY OrderID",
    )
    picked["line"] = _pick(
        pipeline, f"SELECT MAX(OrderLine) FROM OrderDetails WHERE OrderID = {picked['edited']}"
    )
    picked["customer"] = _pick(
        pipeline,
        "SELECT CustomerID FROM Orders WHERE OrderID NOT IN "
        f"({picked['open']}, {picked['shipped']}) ORDER BY CustomerID",
    )
    for order in (picked["open"], picked["shipped"]):
        hand.delete("order_details", d.c.OrderID == order)
        hand.delete("orders", o.c.OrderID == order)
    hand.delete("payments", p.c.PaymentID == picked["payment"])
    (line,) = hand.delete(
        "order_details", (d.c.OrderID == picked["edited"]) & (d.c.OrderLine == picked["line"])
    )
    later = sa.func.datetime(o.c.ModifiedDate, "+1 second")
    shrink_order(pipeline.source, picked["edited"], line["PriceTotal"], later)
    hand.upsert("orders", o.c.OrderID == picked["edited"])
    customer = picked["customer"]
    hand.delete("customers", c.c.CustomerID == customer)
    hand.delete("customer_sites", sites.c.CustomerID == customer)
    hand.delete("customer_accounts", accounts.c.CustomerID == customer)
    picked["deletes"] = Counter(e.table for e in hand.events if e.op == "d")
    picked["refresh"] = hand.publish()
    return picked


def _notices(pipeline: Pipeline, target: str, url: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in pipeline.sync_log(target, url):
        for name, rows in entry["counts"].items():
            if name.rpartition(".")[2] not in ("c", "u", "d", "r"):
                found[name] = found.get(name, 0) + rows
    return found


def _log_ends(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "qs-ends"})
    try:
        ends = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for partition in meta.partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


def _scalar(url: str, sql: str) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def test_deletes_reach_both_targets_with_their_meaning_and_verify_is_equal(
    pipeline: Pipeline, postgres_database: Callable[[str], str]
) -> None:
    urls = {name: postgres_database(name) for name in TARGET_NAMES}
    pipeline.simulate(SIM_ACTIONS)
    pipeline.refresh()
    for name, url in urls.items():
        pipeline.consume(name, url)
        assert pipeline.verify(name, url).ok
    before = {name: target_content(url) for name, url in urls.items()}
    time.sleep(0.05)
    t_before = datetime.now(UTC)
    time.sleep(0.05)

    picked = _delete_some_of_everything(pipeline)
    for name, url in urls.items():
        stats = pipeline.consume(name, url)  # max_errors 0: one dead letter would stop it
        assert stats.errors == 0
        assert stats.tombstones == sum(picked["deletes"][t] for t in target_named(name).tables)
        result = pipeline.verify(name, url)
        assert result.ok, result.as_dict()
        # Every message read is consumed: the stored offsets stand at the log ends (one
        # below: the commit marker), past the tombstones that end a partition.
        topics = [topic_for(pipeline.prefix, t) for t in target_named(name).tables]
        ends = _log_ends(pipeline.bootstrap, topics)
        stored = stored_offsets(url, name)
        assert {k: v for k, v in ends.items() if v} == {k: v + 1 for k, v in stored.items()}

    accounting, shipping = urls["accounting"], urls["shipping"]
    assert (
        _scalar(accounting, f"SELECT status FROM void_invoices WHERE order_id = {picked['open']}")
        == "void"
    )
    assert (
        _scalar(accounting, f"SELECT COUNT(*) FROM invoices WHERE order_id = {picked['open']}") == 0
    )
    assert (
        _scalar(
            accounting,
            f"SELECT COUNT(*) FROM unapplied_payments WHERE payment_id = {picked['payment']}",
        )
        == 1
    )
    assert _notices(pipeline, "accounting", accounting) == {
        "ledger_accounts.deleted_with_orders": 1
    }
    assert (
        _scalar(shipping, f"SELECT status FROM shipments WHERE order_id = {picked['open']}")
        == "canceled"
    )
    assert (
        _scalar(shipping, f"SELECT status FROM shipments WHERE order_id = {picked['shipped']}")
        == "shipped"
    )
    assert _notices(pipeline, "shipping", shipping) == {"shipments.shipped_order_deleted": 1}
    assert (
        _scalar(
            shipping,
            f"SELECT COUNT(*) FROM shipment_lines WHERE order_id = {picked['edited']} "
            f"AND line = {picked['line']}",
        )
        == 0
    )
    after = {name: target_content(url) for name, url in urls.items()}
    time.sleep(0.05)
    t_after = datetime.now(UTC)

    # More activity after the deletes: the rebuilds must stop where they were asked to.
    pipeline.simulate(60)
    pipeline.refresh()
    for name in urls:
        settings = pipeline.settings(target_url=postgres_database(f"{name}_before"))
        rebuild(settings, plan_rebuild(settings, name, t_before))
        assert target_content(settings.target_url_for(name)) == before[name], f"{name} before"
        settings = pipeline.settings(target_url=postgres_database(f"{name}_after"))
        rebuild(settings, plan_rebuild(settings, name, t_after))
        assert target_content(settings.target_url_for(name)) == after[name], f"{name} after"

    # Replayed from the earliest offsets, the deletes and tombstones leave the targets as
    # they were. (A deleted row's create is applied again, and its delete after it: the
    # targets keep no tombstones, so the replay passes through the rows that were gone.)
    for name, url in urls.items():
        pipeline.consume(name, url)
        held = target_content(url)
        settings = pipeline.settings(target_url=url)
        group = settings.group_for(name)
        plan = plan_replay(settings, group, ReplaySpec(to_earliest=True), target_url=url)
        execute_replay(settings, plan)
        stats = pipeline.consume(name, url)
        assert stats.errors == 0, stats
        # Every tombstone in the target's topics is read again: the hand-made ones, and
        # any the producer wrote itself since (a later refresh that touches the edited
        # order deletes, again, the line its own state still held).
        topics = [topic_for(pipeline.prefix, t) for t in target_named(name).tables]
        tombstones = sum(
            1 for m in committed_messages(pipeline.bootstrap, topics) if m.value() is None
        )
        assert tombstones >= sum(picked["deletes"][t] for t in target_named(name).tables)
        assert stats.stale > 0 and stats.tombstones == tombstones, stats
        assert target_content(url) == held
        assert pipeline.verify(name, url).ok


def test_a_repair_at_the_version_held_reaches_both_targets(
    pipeline: Pipeline, postgres_database: Callable[[str], str]
) -> None:
    """A mass update that left ModifiedDate alone, re-published as op r, is applied."""
    urls = {name: postgres_database(name) for name in TARGET_NAMES}
    pipeline.simulate(200)
    pipeline.refresh()
    for name, url in urls.items():
        pipeline.consume(name, url)
    o = source_table("orders")
    with pipeline.source.begin() as conn:  # written outside the ERP: no new ModifiedDate
        conn.execute(sa.update(o).values(WarehouseID=o.c.WarehouseID + 100, Total=o.c.Total + 1))
    for name, url in urls.items():
        assert not pipeline.verify(name, url).ok  # the targets are behind the source now
    hand = HandRefresh(pipeline)
    hand.upsert("orders", sa.true(), op="r")
    hand.publish()
    for name, url in urls.items():
        stats = pipeline.consume(name, url)
        assert stats.errors == 0 and stats.rows > 0, stats
        result = pipeline.verify(name, url)
        assert result.ok, result.as_dict()
