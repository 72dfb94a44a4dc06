"""``queuestream demo``: the main job end to end on the embedded defaults.

Simulate activity, refresh it into Kafka, read it back; simulate more activity,
deletes among it (a line removed from an order, a payment entered by mistake, an
unpaid order, a customer without orders), refresh it and run a sweep pass, so that
the deletes a refresh cannot see (no changed row left behind) are published too;
apply it all to the accounting and shipping targets, and verify both against the
source. Deletes need a sweep, which procedure mode does not have: there the demo
simulates no deletes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from consumers import TARGET_NAMES, target_named
from consumers.runtime import ConsumerRuntime
from consumers.verify import verify
from producer.refresh import Refresher, RefreshResult
from producer.simulator import Simulator
from producer.sweep import Sweeper
from queuestream.databases import create_engine, describe_url
from queuestream.kafka_clients import change_topics, consumer_config
from queuestream.settings import Settings
from queuestream.tables import TABLES
from schemas.avro import AvroCodec

__all__ = ["read_refresh_events", "run_demo"]


def read_refresh_events(
    settings: Settings, codec: AvroCodec, refresh_id: str, expected: int, timeout: float = 30.0
) -> list[tuple[str, int, dict[str, Any], dict[str, Any]]]:
    """Committed events of one refresh: (table, partition, key, value)."""
    consumer = Consumer(
        consumer_config(
            settings, f"queuestream-demo-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
        )
    )
    topics = change_topics(settings)
    consumer.subscribe(topics)
    tables = {f"{settings.topic_prefix}.{t.name}": t.name for t in TABLES}
    found: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error() is not None:
                continue  # end-of-partition events
            table = tables[str(message.topic())]
            value = codec.decode(table, "value", message.value())
            if value is None or value["source"]["refresh_id"] != refresh_id:
                continue
            key = codec.decode(table, "key", message.key())
            found.append((table, int(message.partition() or 0), key or {}, value))
    finally:
        consumer.close()
    return found


def _simulate(settings: Settings, actions: int, seed: int, console: Console) -> None:
    """``actions`` actions (deletes among them in watermark mode), settled when this returns."""
    writer = create_engine(settings.source_url, writer=True)
    deletes = settings.refresh_mode == "watermark"
    try:
        simulator = Simulator(writer, settings.zone, seed=seed, deletes=deletes)
        stats = simulator.run(actions, per_transaction=10)
        settle = writer.dialect.name != "postgresql" and settings.settle_seconds
    finally:
        writer.dispose()
    console.print(
        f"{describe_url(settings.source_url)}: {stats.total} actions ({stats.deletes} of them "
        f"deletes), {stats.rows_written} rows written",
        highlight=False,
    )
    if settle:
        # Rows younger than the settle delay wait for the next window: let them settle.
        with console.status(f"waiting {settings.settle_seconds:g}s for the settle delay"):
            time.sleep(settings.settle_seconds + 0.2)


def _deletes(op_counts: dict[str, int]) -> int:
    """Delete events among a refresh's or sweep batch's ``<table>.<op>`` counts."""
    return sum(n for name, n in op_counts.items() if name.endswith(".d"))


def run_demo(settings: Settings, *, actions: int, seed: int, console: Console) -> None:
    """Simulate, refresh, read back, delete, refresh and sweep, apply to both sample
    targets, verify them."""
    console.rule("1. simulate activity in the sync database")
    _simulate(settings, actions, seed, console)

    console.rule("2. refresh: freeze the changes and publish them in one Kafka transaction")
    engine = create_engine(settings.source_url, existing="the sync database")
    refresher = Refresher(settings, engine)
    try:
        results: list[RefreshResult] = refresher.refresh()
    finally:
        refresher.close()
    result = results[-1]
    console.print(
        f"refresh {result.refresh_id}: {result.events} events, window "
        f"{result.window_start} → {result.window_end}"
    )

    console.rule("3. read back what a read_committed consumer sees")
    events = read_refresh_events(settings, refresher.codec, result.refresh_id, result.events)
    _show_events(settings, events, console)
    verdict = "all" if len(events) == result.events else f"only {len(events)} of"
    console.print(f"[bold]{verdict} {result.events} events of the refresh were read back[/]")
    if len(events) != result.events:
        raise SystemExit(1)

    if settings.refresh_mode == "watermark":
        console.rule("4. more activity with deletes: refresh, then a sweep pass")
        _refresh_and_sweep(settings, actions, seed, console)

    console.rule("5. apply to the sample targets (consumer groups, until idle)")
    for name in TARGET_NAMES:
        runtime = ConsumerRuntime(settings, target_named(name), until_idle=True)
        with console.status(f"{name}: consuming as group {runtime.group}"):
            done = runtime.run()
        console.print(
            f"{name} ({describe_url(settings.target_url_for(name))}): {done.refreshes} refreshes, "
            f"synchronized {done.rows} rows, {done.errors} errors, {done.stale} stale events",
            highlight=False,
        )

    console.rule("6. verify: each target against the source")
    failed = []
    for name in TARGET_NAMES:
        report = verify(settings, name)
        table = Table("table", "rows", "checksum", "result", title=name)
        for check in report.checks:
            table.add_row(
                check.table,
                f"{check.actual_rows}/{check.expected_rows}",
                check.actual_checksum,
                "[green]equal[/]" if check.ok else "[bold red]DIFFERENT[/]",
            )
        console.print(table)
        if not report.ok:
            failed.append(name)
    if failed:
        console.print(f"[bold red]{', '.join(failed)} differ from the source[/]")
        raise SystemExit(1)
    console.print("[bold green]both targets verified equal to the source[/]")


def _refresh_and_sweep(settings: Settings, actions: int, seed: int, console: Console) -> None:
    """Half as many actions again, deletes among them; a refresh publishes the lines removed
    from changed orders, a sweep pass the rows deleted with nothing changed behind them."""
    _simulate(settings, max(1, actions // 2), seed + 1, console)
    refresher = Refresher(settings)
    try:
        published = 0
        for result in refresher.refresh():
            published += _deletes(result.op_counts)
            console.print(
                f"refresh {result.refresh_id}: {result.events} events, "
                f"{_deletes(result.op_counts)} deletes (lines removed from changed orders)"
            )
        report = Sweeper(refresher, max_rows_per_second=1e9).run_pass()
    finally:
        refresher.close()
    swept = report.total("deleted")
    console.print(f"{report.describe()}; {swept} deletes published by the sweep", highlight=False)
    console.print(f"[bold]{published + swept} deletes published in all[/]")


def _show_events(
    settings: Settings,
    events: list[tuple[str, int, dict[str, Any], dict[str, Any]]],
    console: Console,
) -> None:
    table = Table("topic", "events", "ops", "partitions used")
    per_table: dict[str, Counter[str]] = {}
    partitions: dict[str, set[int]] = {}
    for name, partition, _key, value in events:
        per_table.setdefault(name, Counter())[value["op"]] += 1
        partitions.setdefault(name, set()).add(partition)
    for spec in TABLES:
        ops = per_table.get(spec.name, Counter())
        table.add_row(
            f"{settings.topic_prefix}.{spec.name}",
            str(sum(ops.values())),
            ", ".join(f"{op} {n}" for op, n in sorted(ops.items())),
            ", ".join(str(p) for p in sorted(partitions.get(spec.name, set()))),
        )
    console.print(table)
    sample = next((v for n, _p, _k, v in events if n == "customer_accounts"), None)
    if sample is not None:
        after = sample["after"]
        console.print(
            "sample customer_accounts event (account numbers masked before leaving the source): "
            f"CustomerID {after['CustomerID']}, card {after['PrimaryCreditCardNumberDisplay']}, "
            f"bank {after['BankAccountNumber']}"
        )
