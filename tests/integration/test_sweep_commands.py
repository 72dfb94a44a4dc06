"""The sweep as users run it: ``queuestream sweep`` killed mid-pass resumes and publishes
nothing twice; ``produce --sweep-every`` sweeps between refreshes and reports the pass.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from producer.published_state import state_path
from queuestream.producer_status import read_statuses
from queuestream.sync_schema import Base
from tests.helpers import (
    cli_env,
    run_cli,
    sample,
    scrape_metrics,
    start_cli,
    stop_gracefully,
    wait_for,
)
from tests.integration.kafka_readback import committed_changes
from tests.integration.pipeline import Pipeline
from tests.services import free_ports

LATE = 40  # payments written with a clock two days slow


def _env(pipeline: Pipeline) -> dict[str, str]:
    return cli_env(
        pipeline.bootstrap,
        pipeline.prefix,
        QUEUESTREAM_SOURCE_URL=pipeline.source_url,
        QUEUESTREAM_TRANSACTIONAL_ID=f"{pipeline.prefix}-producer",
        QUEUESTREAM_PARTITIONS="3",
        QUEUESTREAM_SETTLE_SECONDS="0",
    )


def _write_late_payments(pipeline: Pipeline) -> list[int]:
    orders = Base.metadata.tables["Orders"]
    payments = Base.metadata.tables["Payments"]
    stamp = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None)
    ids = list(range(910_000, 910_000 + LATE))
    with pipeline.source.begin() as conn:
        customer, order = conn.execute(
            sa.select(orders.c.CustomerID, orders.c.OrderID)
        ).first() or (0, 0)
        conn.execute(
            payments.insert(),
            [
                {
                    "PaymentID": i,
                    "CustomerID": customer,
                    "OrderID": order,
                    "PaymentTypeID": 1,
                    "PaymentDate": stamp,
                    "Amount": Decimal("1.00"),
                    "CurrencyCode": "USD",
                    "Memo": "slow clock",
                    "CreatedDate": stamp,
                    "ModifiedDate": stamp,
                }
                for i in ids
            ],
        )
    return ids


def _payments_published(pipeline: Pipeline, ids: list[int]) -> Counter[int]:
    published, _ = committed_changes(pipeline.bootstrap, pipeline.prefix)
    wanted = set(ids)
    counts: Counter[int] = Counter()
    for (table, key, _version), n in published.items():
        if table == "payments" and key[0] in wanted:
            counts[key[0]] += n
    return counts


def test_a_sweep_killed_mid_pass_resumes_and_publishes_nothing_twice(pipeline: Pipeline) -> None:
    pipeline.simulate(100)
    pipeline.refresh()
    ids = _write_late_payments(pipeline)
    env = _env(pipeline)
    args = ["sweep", "--tables", "payments", "--chunk", "4", "--max-rows-per-second", "8", "--json"]
    first = start_cli(args, env)
    try:
        wait_for(
            lambda: _payments_published(pipeline, ids),
            timeout=60,
            message="the first sweep batches committed",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    before = _payments_published(pipeline, ids)
    assert 0 < len(before) < LATE, "killed mid-pass"
    # And its machine is lost: the state comes back from the changelog topic alone.
    state_path(pipeline.settings()).unlink()

    restarted = datetime.now(UTC)
    done = run_cli(args, env=env)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    after = _payments_published(pipeline, ids)
    assert set(after) == set(ids)
    assert set(after.values()) == {1}, "a late payment was published twice"
    # The pass was resumed, not started over: its report counts both runs' findings.
    assert datetime.fromisoformat(report["started"]) < restarted
    assert report["findings"]["payments"]["late"] == LATE
    assert "Traceback" not in done.stderr


def test_produce_sweeps_between_refreshes_and_reports_the_pass(pipeline: Pipeline) -> None:
    pipeline.simulate(100)
    customers = Base.metadata.tables["Customers"]
    orders = Base.metadata.tables["Orders"]
    with pipeline.source.begin() as conn:
        lonely = conn.execute(
            sa.select(customers.c.CustomerID)
            .where(~customers.c.CustomerID.in_(sa.select(orders.c.CustomerID)))
            .limit(1)
        ).scalar_one()
    pipeline.refresh()  # published, and known to the producer's state
    with pipeline.source.begin() as conn:
        conn.execute(customers.delete().where(customers.c.CustomerID == lonely))
    [port] = free_ports(1)
    env = _env(pipeline)
    # The first pass starts with the first pause between refreshes; the next in an hour.
    process = start_cli(
        ["produce", "--interval", "1", "--sweep-every", "1h", "--metrics-port", str(port)], env
    )
    try:

        def deleted() -> bool:
            _, values = committed_changes(pipeline.bootstrap, pipeline.prefix)
            return any(
                t == "customers" and v["op"] == "d" and v["before"]["CustomerID"] == lonely
                for t, _p, v in values
            )

        wait_for(deleted, timeout=90, message="the sweep publishes the deleted customer")
        status = wait_for(
            lambda: next(
                (
                    s
                    for s in read_statuses(pipeline.settings())
                    if s.sweep and s.sweep["findings"]["customers"]["deleted"]
                ),
                None,
            ),
            timeout=60,
            message="the status topic carries the pass that found it",
        )
        assert status is not None and status.sweep is not None and status.sweep["finished"]
        samples = scrape_metrics(port)
        assert (sample(samples, "queuestream_sweep_passes_total") or 0) >= 1
        found = sample(samples, "queuestream_sweep_rows_total", result="deleted", table="customers")
        assert (found or 0) >= 1
    finally:
        stop_gracefully(process, timeout=30)
    _out, err = process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
