"""Promise 6 on the producing side: one bad row does not stop the feed, and never ends it.

With ``--max-errors N`` a row that cannot be encoded goes to ``<topic>.dlq`` in the
refresh's own transaction (as JSON, after masking, the reason in queuestream's and Kafka
Connect's headers) and everything else is published; the END marker counts exactly the
events that were. Past the budget, or without one, nothing of the refresh is committed,
and ``produce`` keeps running: it retries until the row is fixed, and its metrics, the
status topic and the monitor name the row meanwhile.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from producer.refresh import Refresher
from producer.simulator import Simulator
from queuestream.batches import read_last_end
from queuestream.databases import create_engine
from queuestream.dead_letters import dlq_topic
from queuestream.errors import EncodingError
from queuestream.producer_status import read_statuses
from queuestream.sync_schema import Base
from queuestream.tables import TABLES, topic_for
from schemas.avro import AvroCodec
from tests.helpers import (
    cli_env,
    producer_settings,
    run_cli,
    sample,
    scrape_metrics,
    start_cli,
    stop_gracefully,
    wait_for,
)
from tests.integration.kafka_readback import (
    committed_changes,
    committed_messages,
    message_headers,
)
from tests.integration.source_versions import source_versions
from tests.services import free_ports

#: Invalid UTF-8 in a text column: SQLite stores it, Avro cannot encode it.
_BAD_TEXT = "CAST(X'EDA080' AS TEXT)"


def _spoil(engine: sa.Engine, keys: list[int]) -> datetime:
    """Give the customers ``keys`` a LastName that cannot be encoded, stamped now."""
    stamp = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for key in keys:
            conn.execute(
                sa.text(
                    f'UPDATE "Customers" SET "LastName" = {_BAD_TEXT}, "ModifiedDate" = :stamp '
                    'WHERE "CustomerID" = :key'
                ),
                {"stamp": stamp, "key": key},
            )
    return stamp


def _fix(engine: sa.Engine, key: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'UPDATE "Customers" SET "LastName" = \'Fixed\', "ModifiedDate" = :stamp '
                'WHERE "CustomerID" = :key'
            ),
            {"stamp": datetime.now(UTC).replace(tzinfo=None), "key": key},
        )


def _customer_keys(engine: sa.Engine, count: int) -> list[int]:
    customers = Base.metadata.tables["Customers"]
    with engine.connect() as conn:
        query = sa.select(customers.c.CustomerID).order_by(customers.c.CustomerID).limit(count)
        return list(conn.execute(query).scalars())


def test_within_the_budget_bad_rows_go_to_the_dead_letter_topic_and_the_feed_goes_on(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    engine = create_engine(sqlite_url, writer=True)
    simulator = Simulator(engine, ZoneInfo("UTC"), seed=3)
    simulator.run(150, per_transaction=50)
    settings = producer_settings(
        sqlite_url,
        kafka_bootstrap,
        unique,
        settle_seconds=0,
        max_errors=2,
        sensitive_columns={"customers": {"Email": "mask"}},
    )
    customers = topic_for(unique, "customers")
    refresher = Refresher(settings)
    try:
        refresher.refresh()
        bad = _customer_keys(engine, 3)
        simulator.run(60, per_transaction=30)
        _spoil(engine, bad[:2])

        [result] = refresher.refresh()

        # The two bad rows went to the dead-letter topic in the refresh's transaction ...
        assert result.dead_letters == {"customers": 2}
        letters = committed_messages(kafka_bootstrap, [dlq_topic(customers)])
        assert sorted(json.loads(m.key() or b"")["CustomerID"] for m in letters) == bad[:2]
        for message in letters:
            headers = message_headers(message)
            key = json.loads(message.key() or b"")
            assert headers["queuestream.errors.class"] == "EncodingError"
            assert headers["queuestream.errors.stage"] == "produce"
            assert headers["queuestream.errors.table"] == "customers"
            assert headers["queuestream.errors.column"] == "LastName"
            assert json.loads(headers["queuestream.errors.key"]) == key
            assert headers["queuestream.errors.refresh_id"] == result.refresh_id
            assert headers["__connect.errors.topic"] == customers
            assert headers["__connect.errors.stage"] == "VALUE_CONVERTER"
            assert "LastName" in headers["__connect.errors.exception.message"]
            row = json.loads(message.value() or b"")
            assert row["CustomerID"] == key["CustomerID"]
            # Masked before it left the source, like every published row.
            assert row["Email"] and set(row["Email"][:-4]) <= {"*"}

        # ... and everything else was published, the END counting exactly what was.
        published, values = committed_changes(kafka_bootstrap, unique)
        held_back = {("customers", (k,)) for k in bad[:2]}
        source = {c for c in source_versions(engine) if (c[0], c[1]) not in held_back}
        assert source <= set(published)
        codec = AvroCodec.from_url(unique, settings.schema_registry_url)
        end = read_last_end(settings, codec).marker
        assert end is not None and end.refresh_id == result.refresh_id
        in_refresh = [v for _t, _p, v in values if v["source"]["refresh_id"] == result.refresh_id]
        assert end.event_count == len(in_refresh) == result.events
        assert end.counts["customers"] == sum(
            1 for v in in_refresh if v["source"]["table"] == "Customers"
        )

        # Over the budget: nothing of the refresh is committed, the watermark stays.
        watermark = refresher.progress.watermark
        simulator.run(20, per_transaction=20)
        _spoil(engine, bad[2:])
        with pytest.raises(EncodingError) as caught:
            refresher.refresh()
        assert caught.value.key == {"CustomerID": bad[2]}
        assert refresher.progress.watermark == watermark
        assert len(committed_messages(kafka_bootstrap, [dlq_topic(customers)])) == 2
    finally:
        refresher.close()


def _monitor_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(["monitor", "--check", "--max-lag", "100000000"], env=env, timeout=120)


def test_without_a_budget_produce_waits_for_the_row_and_says_which(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    engine = create_engine(sqlite_url, writer=True)
    simulator = Simulator(engine, ZoneInfo("UTC"), seed=4)
    simulator.run(100, per_transaction=50)
    [bad] = _customer_keys(engine, 1)
    _spoil(engine, [bad])
    [metrics_port] = free_ports(1)
    env = _producer_env(
        kafka_bootstrap,
        unique,
        sqlite_url,
        QUEUESTREAM_RETRY_BACKOFF_SECONDS="0.5",
        QUEUESTREAM_TARGET_RETRY_MAX_SECONDS="2",
    )
    settings = producer_settings(sqlite_url, kafka_bootstrap, unique)
    process = start_cli(["produce", "--interval", "1", "--metrics-port", str(metrics_port)], env)
    try:

        def stuck() -> Any:
            found = [s for s in read_statuses(settings) if s.state == "stuck"]
            return found[0] if found else None

        status = wait_for(stuck, timeout=90, message="the status topic names the stuck row")
        assert status.producer == f"{unique}-producer"
        assert (status.table, status.column) == ("customers", "LastName")
        assert json.loads(status.key or "") == {"CustomerID": bad}
        assert process.poll() is None, "produce must keep running"
        assert sample(scrape_metrics(metrics_port), "queuestream_producer_stuck") == 1
        checked = _monitor_check(env)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert f"STUCK producer {unique}-producer" in checked.stdout
        assert "LastName" in checked.stdout
        assert committed_changes(kafka_bootstrap, unique)[0] == {}  # nothing got through

        _fix(engine, bad)
        wait_for(
            lambda: [s.state for s in read_statuses(settings)] == ["running"],
            timeout=90,
            message="the producer reports running again once the row is fixed",
        )
        assert sample(scrape_metrics(metrics_port), "queuestream_producer_stuck") == 0
        published, _ = committed_changes(kafka_bootstrap, unique)
        assert source_versions(engine) <= set(published)
        checked = _monitor_check(env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        stop_gracefully(process, timeout=30)
    _out, err = process.communicate()
    assert "Traceback" not in err
    assert "the feed waits for this row" in err
    assert "--max-errors" in err


def _spoil_order(engine: sa.Engine, key: int, column: str, value: str) -> None:
    """Give the order ``key`` a value of another type than ``column``'s (SQLite keeps any
    type in any column), stamped now."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "Orders" SET "{column}" = :value, "ModifiedDate" = :stamp '
                'WHERE "OrderID" = :key'
            ),
            {"value": value, "stamp": datetime.now(UTC).replace(tzinfo=None), "key": key},
        )


def test_a_value_of_another_type_is_a_dead_letter_or_the_named_error_of_refresh(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    """Text in an amount or a date column, which SQLAlchemy cannot read: within the budget
    its row goes to ``<topic>.dlq`` naming the column; without one, ``refresh`` fails
    naming table, key and column (exit 1), with no traceback."""
    engine = create_engine(sqlite_url, writer=True)
    Simulator(engine, ZoneInfo("UTC"), seed=5).run(150, per_transaction=50)
    settings = producer_settings(
        sqlite_url, kafka_bootstrap, unique, settle_seconds=0, max_errors=2
    )
    orders = topic_for(unique, "orders")
    with engine.connect() as conn:
        keys = list(
            conn.exec_driver_sql('SELECT "OrderID" FROM "Orders" ORDER BY 1 LIMIT 3').scalars()
        )
    refresher = Refresher(settings)
    try:
        refresher.refresh()
        _spoil_order(engine, keys[0], "Total", "not-a-number")
        _spoil_order(engine, keys[1], "OrderDate", "garbage")
        [result] = refresher.refresh()
        assert result.dead_letters == {"orders": 2}
        letters = committed_messages(kafka_bootstrap, [dlq_topic(orders)])
        found = {json.loads(m.key() or b"")["OrderID"]: message_headers(m) for m in letters}
        assert found.keys() == set(keys[:2])
        assert found[keys[0]]["queuestream.errors.column"] == "Total"
        assert found[keys[1]]["queuestream.errors.column"] == "OrderDate"
        assert (
            "'not-a-number' is not a decimal"
            in found[keys[0]]["__connect.errors.exception.message"]
        )
    finally:
        refresher.close()

    _spoil_order(engine, keys[2], "CustomerID", "x")
    env = _producer_env(kafka_bootstrap, unique, sqlite_url)
    done = run_cli(["refresh"], env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert (
        f"table orders, key {{'OrderID': {keys[2]}}}, column CustomerID: 'x' is not an integer"
        in done.stderr
    )


def _producer_env(bootstrap: str, prefix: str, source_url: str, **more: str) -> dict[str, str]:
    """The environment of a ``queuestream`` producer command on ``source_url``."""
    return cli_env(
        bootstrap,
        prefix,
        QUEUESTREAM_SOURCE_URL=source_url,
        QUEUESTREAM_TRANSACTIONAL_ID=f"{prefix}-producer",
        QUEUESTREAM_SETTLE_SECONDS="0",
        **more,
    )


#: Rows only the sweep reads, each refused by it: (table, key column, column, value,
#: why). SQLite compares dates as text, so no refresh's window selects a ModifiedDate of
#: 'garbage' (the sweep crashed on it). A value changed to one its column cannot hold,
#: with the published ModifiedDate kept, differs from what was published; the sweep could
#: not encode it to compare, which ended the pass whatever the budget.
_SWEPT = [
    ("Payments", "PaymentID", "ModifiedDate", "'garbage' is not a date and time"),
    ("Orders", "OrderID", "Total", "'garbage' is not a decimal"),
]


@pytest.mark.parametrize(("table", "key_column", "column", "why"), _SWEPT, ids=["stamp", "value"])
def test_a_row_only_the_sweep_reads_is_refused_by_name_and_a_dead_letter_within_the_budget(
    sqlite_url: str,
    kafka_bootstrap: str,
    unique: str,
    table: str,
    key_column: str,
    column: str,
    why: str,
) -> None:
    """The sweep publishes such a row, so it is refused as any row that cannot be encoded:
    a dead letter within the budget, else one line naming table, key and column. Its
    summary counts it as refused (it counted it late or repaired, as if published)."""
    engine = create_engine(sqlite_url, writer=True)
    Simulator(engine, ZoneInfo("UTC"), seed=6).run(150, per_transaction=50)
    # No overlap: the spoiled row's stamp lies behind the second refresh's window.
    env = _producer_env(kafka_bootstrap, unique, sqlite_url, QUEUESTREAM_OVERLAP_SECONDS="0")
    assert run_cli(["refresh"], env=env, timeout=120).returncode == 0
    with engine.begin() as conn:
        key = conn.exec_driver_sql(f'SELECT min("{key_column}") FROM "{table}"').scalar_one()
        conn.exec_driver_sql(
            f'UPDATE "{table}" SET "{column}" = \'garbage\' WHERE "{key_column}" = ?', (key,)
        )
    engine.dispose()
    assert run_cli(["refresh"], env=env, timeout=120).returncode == 0  # not in its window

    refused = run_cli(["sweep"], env=env, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    name = next(spec.name for spec in TABLES if spec.source == table)
    assert f"table {name}, key {{'{key_column}': {key}}}, column {column}: {why}" in refused.stderr
    swept = run_cli(["sweep", "--json"], env={**env, "QUEUESTREAM_MAX_ERRORS": "1"}, timeout=120)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    found = json.loads(swept.stdout)["findings"][name]
    assert (found["late"], found["repaired"], found.get("refused")) == (0, 0, 1), found
    letters = committed_messages(kafka_bootstrap, [dlq_topic(topic_for(unique, name))])
    assert [json.loads(m.key() or b"")[key_column] for m in letters] == [key]
    assert message_headers(letters[0])["queuestream.errors.column"] == column


def test_a_key_that_is_no_integer_is_refused_by_name_in_a_refresh_and_in_the_sweep(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    """Text in a key column of a SQLite OrderDetails row ended the refresh and the sweep in
    a traceback (the state keys rows by integers). Its row is now refused as any row that
    cannot be encoded: a dead letter within the budget, otherwise one line naming it; the
    order's other lines are published."""
    engine = create_engine(sqlite_url, writer=True)
    Simulator(engine, ZoneInfo("UTC"), seed=7).run(150, per_transaction=50)
    env = _producer_env(kafka_bootstrap, unique, sqlite_url)
    assert run_cli(["refresh"], env=env, timeout=120).returncode == 0
    with engine.begin() as conn:
        order, line = conn.exec_driver_sql(
            'SELECT "OrderID", min("OrderLine") FROM "OrderDetails" GROUP BY 1 '
            "HAVING count(*) > 1 ORDER BY 1 LIMIT 1"
        ).one()
        conn.exec_driver_sql(
            'UPDATE "OrderDetails" SET "OrderLine" = \'x\', "ModifiedDate" = ? '
            'WHERE "OrderID" = ? AND "OrderLine" = ?',
            (datetime.now(UTC).replace(tzinfo=None), order, line),
        )
        conn.exec_driver_sql(
            'UPDATE "OrderDetails" SET "Quantity" = "Quantity" + 1, "ModifiedDate" = ? '
            'WHERE "OrderID" = ? AND "OrderLine" != \'x\'',
            (datetime.now(UTC).replace(tzinfo=None), order),
        )
    engine.dispose()
    named = f"table order_details, key {{'OrderID': {order}, 'OrderLine': 'x'}}, column OrderLine"

    stopped = run_cli(["refresh"], env=env, timeout=120)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"{named}: 'x' is not an integer" in stopped.stderr

    budget = {**env, "QUEUESTREAM_MAX_ERRORS": "1"}
    done = run_cli(["refresh", "--json"], env=budget, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["dead_letters"] == {"order_details": 1}
    assert result["counts"]["order_details"] >= 1  # the order's other lines
    details = topic_for(unique, "order_details")
    letters = committed_messages(kafka_bootstrap, [dlq_topic(details)])
    assert [json.loads(m.key() or b"") for m in letters] == [{"OrderID": order, "OrderLine": "x"}]
    assert message_headers(letters[0])["queuestream.errors.column"] == "OrderLine"

    refused = run_cli(["sweep"], env=env, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"{named}: 'x' is not an integer" in refused.stderr
