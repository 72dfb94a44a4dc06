"""Promise 6 (producer side): bad input stops the refresh with an error naming table, key
and column; nothing of that refresh is committed and the watermark stays; once the row is
fixed the next refresh publishes everything. An unreachable broker gives a clear,
bounded BrokerUnavailableError, in the library and through the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from producer.progress import read_progress
from producer.refresh import Refresher
from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.errors import BrokerUnavailableError, EncodingError
from queuestream.settings import Settings, load_settings
from queuestream.sync_schema import Base, create_source_schema
from schemas.avro import AvroCodec
from tests.helpers import producer_settings
from tests.integration.kafka_readback import committed_changes
from tests.integration.source_versions import assert_exactly_once, source_versions
from tests.services import free_ports

COMMAND = [sys.executable, "-m", "queuestream.cli"]
#: How long the broker may take to answer (broker_timeout_seconds, 15 s by default)
#: before the refresh declares it unreachable: the tests below wait it out.
ADMIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class BadValue:
    source: str  # table in the sync database
    table: str  # contract name, as the error names it
    key_column: str
    column: str
    bad: str  # SQL expression written into the column
    good: Any  # the fix
    reason: str  # part of the error's reason
    loosen: bool = False  # the source's column accepts NULL although the contract does not


BAD_VALUES = {
    # SQLite does not enforce Numeric(16, 2): 1e20 is stored as it is.
    "decimal-beyond-precision": BadValue(
        "Orders",
        "orders",
        "OrderID",
        "Total",
        "100000000000000000000",
        12.34,
        "does not fit decimal(16,2)",
    ),
    # A sync database whose column allows NULL where the contract requires a value.
    "null-in-required-column": BadValue(
        "Customers",
        "customers",
        "CustomerID",
        "FirstName",
        "NULL",
        "Fixed",
        "NULL in a column that is not nullable",
        loosen=True,
    ),
    "invalid-utf8": BadValue(
        "Customers",
        "customers",
        "CustomerID",
        "LastName",
        "CAST(X'EDA080' AS TEXT)",
        "Fixed",
        "surrogates",
    ),
}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _settings(url: str, bootstrap: str, prefix: str) -> Settings:
    return producer_settings(url, bootstrap, prefix, settle_seconds=0)  # no concurrent writer


def _codec(settings: Settings) -> AvroCodec:
    return AvroCodec.from_url(settings.topic_prefix, settings.schema_registry_url)


def _set(engine: sa.Engine, case: BadValue, key: int, expression: str, **params: Any) -> datetime:
    stamp = _now()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{case.source}" SET "{case.column}" = {expression}, '
                f'"ModifiedDate" = :stamp WHERE "{case.key_column}" = :key'
            ),
            {"stamp": stamp, "key": key, **params},
        )
    return stamp


@pytest.mark.parametrize("case_name", list(BAD_VALUES))
def test_unencodable_value_fails_the_refresh_and_holds_the_watermark(
    case_name: str, sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    case = BAD_VALUES[case_name]
    engine = create_engine(sqlite_url, writer=True)
    if case.loosen:
        loose = sa.MetaData()
        table = Base.metadata.tables[case.source].to_metadata(loose)
        table.c[case.column].nullable = True
        loose.create_all(engine)
    simulator = Simulator(engine, ZoneInfo("UTC"), seed=1)
    simulator.run(200, per_transaction=50)
    settings = _settings(sqlite_url, kafka_bootstrap, unique)
    refreshers = [Refresher(settings)]
    try:
        [first] = refreshers[0].refresh()
        assert first.events > 0
        committed_before, _ = committed_changes(kafka_bootstrap, unique)
        progress_before = read_progress(settings, _codec(settings))
        assert progress_before.refresh_id == first.refresh_id

        # New activity, then one bad row among it.
        simulator.run(100, per_transaction=50)
        base = Base.metadata.tables[case.source]
        with engine.connect() as conn:
            key = conn.execute(sa.select(sa.func.max(base.c[case.key_column]))).scalar_one()
        bad_stamp = _set(engine, case, key, case.bad)

        for attempt in range(2):  # the running producer, then a restarted one
            if attempt:
                refreshers.append(Refresher(settings))
            with pytest.raises(EncodingError) as caught:
                refreshers[-1].refresh()
            error = caught.value
            assert (error.table, error.key, error.column) == (
                case.table,
                {case.key_column: key},
                case.column,
            )
            message = str(error)
            assert f"table {case.table}" in message
            assert f"key {{'{case.key_column}': {key}}}" in message
            assert f"column {case.column}" in message
            assert case.reason in message
            # Nothing of the failed refresh is visible, and the watermark did not move.
            committed_now, _ = committed_changes(kafka_bootstrap, unique)
            assert committed_now == committed_before
            progress = read_progress(settings, _codec(settings))
            assert progress.refresh_id == progress_before.refresh_id
            assert progress.watermark == progress_before.watermark
            assert refreshers[-1].progress.watermark == progress_before.watermark

        # Fixed at the source: the next refresh publishes everything held back.
        _set(engine, case, key, ":good", good=case.good)
        [after] = refreshers[-1].refresh()
        assert after.events > 0
        assert after.window_start == progress_before.watermark
    finally:
        for refresher in refreshers:
            refresher.close()
    published, _ = committed_changes(kafka_bootstrap, unique)
    assert_exactly_once(published, source_versions(engine))
    assert (case.table, (key,), bad_stamp.replace(tzinfo=UTC)) not in published
    engine.dispose()


def _sync_database(url: str) -> None:
    """An empty sync database: the refresh checks its tables before it talks to Kafka."""
    engine = create_engine(url, writer=True)
    try:
        create_source_schema(engine)
    finally:
        engine.dispose()


def test_unreachable_broker_raises_broker_unavailable_quickly(sqlite_url: str, unique: str) -> None:
    _sync_database(sqlite_url)
    (port,) = free_ports(1)
    settings = load_settings(
        None,
        source_url=sqlite_url,
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        topic_prefix=unique,
        broker_timeout_seconds=ADMIN_TIMEOUT,
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as caught:
        Refresher(settings).refresh()
    elapsed = time.monotonic() - started
    assert elapsed < ADMIN_TIMEOUT + 10, f"took {elapsed:.1f}s to give up"
    message = str(caught.value)
    assert f"Kafka at 127.0.0.1:{port} is unreachable" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message  # says what to do


def test_unreachable_broker_through_the_command(
    sqlite_url: str, unique: str, tmp_path: Path
) -> None:
    _sync_database(sqlite_url)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUESTREAM_", "KAFKA_"))}
    config = tmp_path / "queuestream.toml"
    config.write_text(f"broker_timeout_seconds = {ADMIN_TIMEOUT}\n")
    started = time.monotonic()
    done = subprocess.run(
        [
            *COMMAND,
            "--config",
            str(config),
            "--source",
            sqlite_url,
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--topic-prefix",
            unique,
            "refresh",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=ADMIN_TIMEOUT + 45,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-2000:]
    assert elapsed < ADMIN_TIMEOUT + 20, f"took {elapsed:.1f}s to give up"
    assert "Traceback" not in done.stderr
    # librdkafka's own connection-refused lines go through logging (shown with --verbose);
    # what is printed is the note that it waits (no 15 s of silence), then one line, not
    # wrapped, saying what is wrong.
    *notes, line = done.stderr.strip().splitlines()
    assert [n.split(": ", 1)[-1] for n in notes] == [
        f"Kafka at 127.0.0.1:{port} does not answer yet: waiting up to {ADMIN_TIMEOUT:.0f}s "
        "(broker_timeout_seconds)"
    ], done.stderr[-2000:]
    assert line.startswith("BrokerUnavailableError: "), done.stderr[-2000:]
    assert f"Kafka at 127.0.0.1:{port} is unreachable" in line
    assert done.stdout == ""
