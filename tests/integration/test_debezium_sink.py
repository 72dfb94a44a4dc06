"""Debezium's JDBC sink reads queuestream's topics into PostgreSQL, cell for cell.

The event contract says Kafka Connect with Debezium's JDBC sink is the reference reader.
Here a real producer in registry mode (the registry of the session: Apicurio, whose
Confluent-compatible ids Apicurio's converter reads as content ids) publishes a refresh
history of a simulated SQLite source: creates, updates, a line deleted with its order's
change, a sweep that publishes what the simulator deleted, a re-sync with ``--since``
(op ``r``), then more of the same. One Connect worker (the session's ``connect_url``,
scripts/connect-local.sh) runs one sink connector per variant side by side, each
configured as docs/kafka-connect.md says (the blocks are read from that page; only
addresses and names change) and writing into a fresh PostgreSQL database;
the test waits (bounded) until every table of each equals the source. One test, not one
per variant: pytest-xdist would give each worker that runs one its own history.

* every row, no more (deletes applied), every cell equal and of its type: timestamps
  in ``timestamp without time zone`` columns of microsecond precision holding the
  source's local time in UTC to the microsecond, decimals in ``numeric`` columns of the
  column's scale, exact; sensitive columns as the producer publishes them (masked);
* with the sink's default table names (``<prefix>_<table>``), with
  ``collection.name.format=${source.schema}_${source.table}`` (``main_orders``: SQLite's
  schema) and through Debezium's ``ExtractNewRecordState``;
* the documented ``topics.regex`` takes every change topic and leaves out the batches topic.

Each protection fails this test when removed: without ``connect.name`` on the
timestamp fields they arrive as BIGINT; with ``source.schema`` null the
``${source.schema}`` naming fails in the sink; a pattern that takes the batches topic
fails the connector on it; a ``source.db`` holding the SQLite file's path fails the
check of the source blocks.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.connect_sink import Connector, documented_properties
from producer.refresh import Refresher
from producer.sensitive import ColumnPolicy
from producer.simulator import Simulator
from producer.sweep import Sweeper
from queuestream.databases import create_engine
from queuestream.kafka_clients import batches_topic, change_topics
from queuestream.settings import Settings
from queuestream.sync_schema import create_source_schema, source_table
from queuestream.tables import TABLES, TableSpec, topic_for
from schemas.avro import AvroCodec
from tests.helpers import producer_settings
from tests.integration.kafka_readback import committed_messages, located, wait_until_readable

#: Seconds for a sink to bring its target level with the source (the history is small).
SINK_TIMEOUT = 180.0
#: The source stamps local time (as Exigo does); events and the sink carry UTC.
SOURCE_ZONE = "America/Chicago"
#: information_schema data types a source column may arrive as.
_INTEGERS = {"integer", "bigint", "smallint"}
_TEXTS = {"text", "character varying"}

Rows = dict[tuple[Any, ...], dict[str, Any]]
#: The connectors the test runs: variant -> (the table the sink writes for a topic prefix
#: and a table, what the variant adds to the documented configuration).
VARIANTS: dict[str, tuple[Callable[[str, TableSpec], str], dict[str, str]]] = {
    "default_names": (lambda prefix, spec: f"{prefix}_{spec.name}", {}),
    "source_names": (
        lambda _prefix, spec: f"main_{spec.source.lower()}",
        {"collection.name.format": "${source.schema}_${source.table}"},
    ),
    "unwrapped": (
        lambda prefix, spec: f"{prefix}_{spec.name}",
        {
            "transforms": "unwrap",
            "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
        },
    ),
}


@dataclass
class History:
    """What the module's producer published, and the source rows it ended with."""

    settings: Settings
    registry_api: str  # Apicurio's own API, which its converter calls
    expected: dict[str, Rows]  # table -> key -> column -> value as the target must hold it

    @property
    def prefix(self) -> str:
        return self.settings.topic_prefix


def _refresh(settings: Settings, since: datetime | None = None) -> None:
    refresher = Refresher(settings)
    try:
        refresher.refresh(since)
    finally:
        refresher.close()
    wait_until_readable(settings.kafka_bootstrap_servers, _all_topics(settings))


def _sweep(settings: Settings) -> None:
    refresher = Refresher(settings)
    try:
        Sweeper(refresher, max_rows_per_second=1e9).run_pass()
    finally:
        refresher.close()
    wait_until_readable(settings.kafka_bootstrap_servers, _all_topics(settings))


def _all_topics(settings: Settings) -> list[str]:
    return [*change_topics(settings), batches_topic(settings)]


def _apicurio_api(registry_url: str) -> str:
    """Apicurio's own API beside its Confluent-compatible one (``/apis/ccompat/v7``)."""
    base, found, _ = registry_url.rstrip("/").partition("/apis/ccompat/")
    if not found:
        pytest.fail(
            f"the schema registry {registry_url} is not Apicurio's Confluent-compatible API "
            "(/apis/ccompat/v7): Apicurio's converter, which the sink uses, needs Apicurio",
            pytrace=False,
        )
    return f"{base}/apis/registry/v2"


def _expected(settings: Settings, engine: sa.Engine) -> dict[str, Rows]:
    """Every source row as the sink must write it: timestamps in UTC (naive, as a
    ``timestamp`` column holds them), sensitive columns as the producer publishes them."""
    policy = ColumnPolicy(settings.sensitive_columns)
    expected: dict[str, Rows] = {}
    with engine.connect() as conn:
        for spec in TABLES:
            table = source_table(spec.name)
            protect = policy.for_table(spec.name)
            rows: Rows = {}
            for record in conn.execute(sa.select(table)):
                row = dict(record._mapping)
                for column in table.columns:
                    value = row[column.name]
                    if isinstance(column.type, sa.DateTime) and value is not None:
                        aware = value.replace(tzinfo=settings.zone).astimezone(UTC)
                        row[column.name] = aware.replace(tzinfo=None)
                if protect is not None:
                    protect(row)
                rows[tuple(row[k] for k in spec.key)] = row
            assert rows, f"the simulated history left {spec.source} empty"
            expected[spec.name] = rows
    return expected


def _publish_history(kafka_bootstrap: str, registry_url: str, where: Path) -> History:
    """One refresh history in registry mode, for every connector of the test to read."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = producer_settings(
        f"sqlite:///{where / 'exigo-sync.db'}",
        kafka_bootstrap,
        prefix,
        schema_registry_url=registry_url,
        source_timezone=SOURCE_ZONE,
        settle_seconds=0,
    )
    engine = create_engine(settings.source_url, writer=True)
    try:
        create_source_schema(engine)
        start = datetime.now(UTC)
        Simulator(engine, settings.zone, seed=11).run(300, per_transaction=20)
        _refresh(settings)  # creates
        Simulator(engine, settings.zone, seed=12, deletes=True).run(300, per_transaction=20)
        _refresh(settings)  # updates, creates, lines deleted with their orders' changes
        _sweep(settings)  # the orders, payments and customers the simulator deleted
        _refresh(settings, since=start - timedelta(minutes=1))  # a re-sync: op r
        Simulator(engine, settings.zone, seed=13, deletes=True).run(150, per_transaction=20)
        _refresh(settings)
        _sweep(settings)
        return History(settings, _apicurio_api(registry_url), _expected(settings, engine))
    finally:
        engine.dispose()


def _sink_config(history: History, target_url: str, **more: str) -> dict[str, str]:
    """The documented sink connector, pointed at this test's topics, registry and target."""
    config = documented_properties("sink")
    target = make_url(target_url)
    config["topics.regex"] = config["topics.regex"].replace("exigo", history.prefix, 1)
    config["connection.url"] = f"jdbc:postgresql://{target.host}:{target.port}/{target.database}"
    config["connection.username"] = target.username or "postgres"
    config["connection.password"] = target.password or ""
    for side in ("key", "value"):
        config[f"{side}.converter.apicurio.registry.url"] = history.registry_api
    config.update(more)
    return config


def _type_problem(column: sa.Column[Any], info: dict[str, Any]) -> str | None:
    """Why the target column ``info`` (information_schema) does not hold ``column``'s type."""
    kind, data_type = column.type, info["data_type"]
    if isinstance(kind, sa.DateTime):
        if data_type != "timestamp without time zone" or info["datetime_precision"] != 6:
            return f"{data_type}({info['datetime_precision']}), not timestamp(6)"
    elif isinstance(kind, sa.Numeric):
        if data_type != "numeric" or info["numeric_scale"] != kind.scale:
            return f"{data_type} scale {info['numeric_scale']}, not numeric scale {kind.scale}"
    elif isinstance(kind, sa.Integer):
        if data_type not in _INTEGERS:
            return f"{data_type}, not an integer type"
    elif isinstance(kind, sa.String) and data_type not in _TEXTS:
        return f"{data_type}, not a text type"
    return None


def _differences(
    history: History, target_url: str, table_name: Callable[[str, TableSpec], str]
) -> Callable[[], list[str]]:
    """What still differs between the target and the expected rows (empty: equal)."""

    def compare() -> list[str]:
        engine = create_engine(target_url)
        try:
            with engine.connect() as conn:
                return [
                    problem
                    for spec in TABLES
                    for problem in _table_differences(
                        conn, history, spec, table_name(history.prefix, spec)
                    )
                ]
        finally:
            engine.dispose()

    return compare


def _table_differences(
    conn: sa.Connection, history: History, spec: TableSpec, name: str
) -> list[str]:
    columns = {
        str(info["column_name"]): dict(info)
        for info in conn.execute(
            sa.text(
                "SELECT column_name, data_type, datetime_precision, numeric_scale "
                "FROM information_schema.columns WHERE table_name = :name"
            ),
            {"name": name},
        ).mappings()
    }
    if not columns:
        return [f"{name}: no such table (yet)"]
    source = source_table(spec.name)
    problems = []
    for column in source.columns:
        info = columns.get(column.name.lower())
        if info is None:
            problems.append(f"{name}.{column.name}: no such column; it has {sorted(columns)}")
            continue
        problem = _type_problem(column, info)
        if problem is not None:
            problems.append(f"{name}.{column.name}: {problem}")
    if problems:  # the sink made the table so: waiting changes nothing
        raise AssertionError("\n".join(["the sink's table does not fit the source:", *problems]))
    held: Rows = {}
    for record in conn.execute(sa.text(f'SELECT * FROM "{name}"')).mappings():
        row = {c.name: record[c.name.lower()] for c in source.columns}
        held[tuple(row[k] for k in spec.key)] = row
    expected = history.expected[spec.name]
    for key in sorted(expected.keys() - held.keys())[:5]:
        problems.append(f"{name} {key}: missing")
    for key in sorted(held.keys() - expected.keys())[:5]:
        problems.append(f"{name} {key}: in the target, not in the source (a delete not applied)")
    for key in sorted(expected.keys() & held.keys()):
        for field, want in expected[key].items():
            got = held[key][field]
            if got != want or type(got) is not type(want) or _scale(got) != _scale(want):
                problems.append(f"{name} {key} {field}: {got!r}, source {want!r}")
    return problems


def _scale(value: Any) -> int | None:
    """A decimal's exponent (``Decimal('1.50')`` -> -2): exact means the scale too."""
    return int(value.as_tuple().exponent) if isinstance(value, Decimal) else None


def _check_history(history: History) -> None:
    """Every op is in the history the sinks read, and every ``source`` block names the
    database by the SQLite file's stem and the schema by SQLite's ``main`` (not a path,
    not null: Debezium's sink names tables after them)."""
    settings = history.settings
    codec = AvroCodec.from_url(history.prefix, settings.schema_registry_url)
    topics = {topic_for(history.prefix, spec.name): spec.name for spec in TABLES}
    ops: Counter[str] = Counter()
    for message in committed_messages(settings.kafka_bootstrap_servers, list(topics)):
        data = message.value()
        if data is None:
            ops["tombstone"] += 1
            continue
        value = codec.decode(topics[located(message)[0]], "value", data)
        assert value is not None
        ops[value["op"]] += 1
        assert (value["source"]["db"], value["source"]["schema"]) == ("exigo-sync", "main")
    assert all(ops[op] for op in ("c", "u", "r", "d", "tombstone")), ops


def test_debezium_jdbc_sink_copies_the_source_cell_for_cell(
    kafka_bootstrap: str,
    schema_registry_url: str,
    connect_url: str,
    postgres_database: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """One history, one connector per variant side by side on the worker, each into its
    own database (one test, so that one xdist worker publishes the history once)."""
    history = _publish_history(kafka_bootstrap, schema_registry_url, tmp_path)
    _check_history(history)
    started: list[tuple[str, Connector, str]] = []
    try:
        for variant, (_naming, extra) in VARIANTS.items():
            target = postgres_database(f"sink_{variant}")
            config = _sink_config(history, target, **extra)
            connector = Connector(connect_url, f"{history.prefix}-{variant}", config)
            connector.create()
            started.append((variant, connector, target))
        for variant, connector, target in started:
            compare = _differences(history, target, VARIANTS[variant][0])
            connector.wait_until(compare, SINK_TIMEOUT)
            # Connect's active topics: every change topic, never the batches topic.
            assert connector.topics() == set(change_topics(history.settings)), variant
    finally:
        for _variant, connector, _target in started:
            connector.delete()
