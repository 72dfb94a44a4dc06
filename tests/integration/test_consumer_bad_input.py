"""Promise 6 in the consumers, against a real broker: poison events and the error budget.

An event that cannot be decoded or applied goes to ``<topic>.dlq`` with the reason
in headers, within ``--max-errors``; one more stops the consumer with a clear error
and nothing of the failing batch is committed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumers import offsets
from consumers.dead_letters import ErrorBudgetExceededError, dlq_topic
from queuestream.databases import create_engine
from queuestream.tables import topic_for
from tests.integration.kafka_readback import committed_messages, message_headers
from tests.integration.pipeline import Pipeline


def _spoil_currencies(pipeline: Pipeline, count: int) -> list[int]:
    """Give ``count`` orders a currency code no ledger accepts; returns their ids."""
    with pipeline.source.begin() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                sa.text('SELECT "OrderID" FROM "Orders" ORDER BY "OrderID" DESC LIMIT :n'),
                {"n": count},
            )
        ]
        orders = sa.table(
            "Orders", sa.column("OrderID"), sa.column("CurrencyCode"), sa.column("ModifiedDate")
        )
        conn.execute(
            sa.update(orders)
            .where(orders.c.OrderID.in_(ids))
            .values(CurrencyCode="EURO", ModifiedDate=datetime.now(UTC).replace(tzinfo=None))
        )
    return ids


def test_poison_within_the_budget_goes_to_the_dead_letter_topic(
    pipeline: Pipeline, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'accounting.db'}"
    pipeline.simulate(200)
    (bad_order,) = _spoil_currencies(pipeline, 1)
    pipeline.refresh()
    orders = topic_for(unique, "orders")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(orders, key=b"?", value=b"this is not Avro", partition=1)
    producer.flush(10)

    stats = pipeline.consume("accounting", url, max_errors=2)

    assert stats.errors == 2
    letters = committed_messages(kafka_bootstrap, [dlq_topic(orders)])
    assert len(letters) == 2
    by_class = {message_headers(m)["queuestream.errors.class"]: m for m in letters}
    assert set(by_class) == {"RecordError", "DecodeError"}
    refused = message_headers(by_class["RecordError"])
    assert refused["queuestream.errors.topic"] == orders
    assert refused["queuestream.errors.table"] == "orders"
    assert refused["queuestream.errors.column"] == "CurrencyCode"
    assert json.loads(refused["queuestream.errors.key"]) == {"OrderID": bad_order}
    assert "EURO" in refused["queuestream.errors.message"]
    assert refused["queuestream.errors.stage"] == "apply"
    # Kafka Connect's dead-letter headers too, for tools written for Connect.
    assert refused["__connect.errors.topic"] == orders
    assert refused["__connect.errors.stage"] == "TASK_PUT"
    assert refused["__connect.errors.exception.class.name"] == "queuestream.errors.RecordError"
    assert "EURO" in refused["__connect.errors.exception.message"]
    assert refused["__connect.errors.offset"] == refused["queuestream.errors.offset"]
    undecodable = by_class["DecodeError"]
    assert undecodable.value() == b"this is not Avro"
    assert message_headers(undecodable)["queuestream.errors.partition"] == "1"
    assert message_headers(undecodable)["__connect.errors.partition"] == "1"
    assert message_headers(undecodable)["__connect.errors.stage"] == "VALUE_CONVERTER"

    # Everything else arrived; the refused order is the one difference from the source.
    report = pipeline.verify("accounting", url)
    wrong = {c.table: c for c in report.checks if not c.ok}
    assert wrong, "the refused order is missing from the target"
    assert wrong["invoices"].missing == [(bad_order,)]
    assert wrong["invoices"].unexpected == []
    log = pipeline.sync_log("accounting", url)
    assert sum(e["errors"] for e in log) == 2


def test_over_the_budget_the_consumer_stops_and_commits_nothing_of_that_batch(
    pipeline: Pipeline, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'accounting.db'}"
    pipeline.simulate(200)
    pipeline.refresh()
    pipeline.consume("accounting", url)
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = offsets.stored_offsets(conn, "accounting")
    log = pipeline.sync_log("accounting", url)

    pipeline.simulate(100)
    bad = _spoil_currencies(pipeline, 2)
    (failing,) = pipeline.refresh()

    with pytest.raises(ErrorBudgetExceededError) as raised:
        pipeline.consume("accounting", url, max_errors=1)
    message = str(raised.value)
    assert "--max-errors" in message
    assert "CurrencyCode" in message
    assert failing.refresh_id in message

    with engine.connect() as conn:
        assert offsets.stored_offsets(conn, "accounting") == stored
    assert pipeline.sync_log("accounting", url) == log
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    letters = dlq_topic(topic_for(unique, "orders"))
    if letters in metadata.topics:
        assert committed_messages(kafka_bootstrap, [letters]) == []

    # With room in the budget the same batch goes through; only the refused orders lack.
    stats = pipeline.consume("accounting", url, max_errors=2)
    assert stats.errors == 2
    wrong = {c.table: c for c in pipeline.verify("accounting", url).checks if not c.ok}
    assert sorted(wrong["invoices"].missing) == sorted((i,) for i in bad)
    engine.dispose()
