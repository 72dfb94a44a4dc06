"""The queuestream command as a user runs it: sim, refresh --json, produce and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import sqlalchemy as sa

from queuestream.databases import create_engine
from queuestream.sync_schema import Base
from tests.helpers import CLI as COMMAND
from tests.helpers import cli_env, run_cli, wait_for
from tests.integration.kafka_readback import committed_changes


def _env(source_url: str, bootstrap: str, prefix: str) -> dict[str, str]:
    return cli_env(
        bootstrap,
        prefix,
        QUEUESTREAM_SOURCE_URL=source_url,
        QUEUESTREAM_SETTLE_SECONDS="0",
        QUEUESTREAM_PARTITIONS="3",
    )


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(args, env)


def _content(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, without the clock-dependent columns."""
    engine = create_engine(url)
    content = {}
    with engine.connect() as conn:
        for name, table in Base.metadata.tables.items():
            columns = [c for c in table.c if not isinstance(c.type, sa.DateTime)]
            content[name] = [
                tuple(r) for r in conn.execute(sa.select(*columns).order_by(*table.primary_key))
            ]
    engine.dispose()
    return content


def test_sim_is_reproducible(source_url: str, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    env = {**os.environ}
    first = _run(["--source", source_url, "sim", "--actions", "200", "--seed", "5"], env)
    assert first.returncode == 0, first.stderr
    assert "simulated 200 actions" in first.stdout
    second = _run(["--source", other, "sim", "--actions", "200", "--seed", "5"], env)
    assert second.returncode == 0, second.stderr
    a, b = _content(source_url), _content(other)
    assert a == b
    assert len(a["Customers"]) > 10 and len(a["OrderDetails"]) > len(a["Orders"]) > 10
    statuses = {row[2] for row in a["Orders"]}
    assert {2, 5, 10} <= statuses  # pending, canceled and shipped orders exist


def test_refresh_json_then_nothing_new(sqlite_url: str, kafka_bootstrap: str, unique: str) -> None:
    env = _env(sqlite_url, kafka_bootstrap, unique)
    assert _run(["sim", "--actions", "100"], env).returncode == 0
    done = _run(["refresh", "--json"], env)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    changes, _ = committed_changes(kafka_bootstrap, unique)
    assert result["events"] == sum(changes.values()) > 0
    again = _run(["refresh", "--json"], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["events"] == 0


def test_produce_stops_cleanly_on_sigterm(
    sqlite_url: str, kafka_bootstrap: str, unique: str
) -> None:
    env = _env(sqlite_url, kafka_bootstrap, unique)
    assert _run(["sim", "--actions", "100"], env).returncode == 0
    process = subprocess.Popen(
        [*COMMAND, "produce", "--interval", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: sum(committed_changes(kafka_bootstrap, unique, timeout=20)[0].values()) > 0,
            timeout=60,
            interval=0.5,
            message="the producer published its first refresh",
            ignore=(KeyError, AssertionError),
        )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stopped after" in out
    changes, _ = committed_changes(kafka_bootstrap, unique)
    assert max(changes.values()) == 1


def test_errors_print_type_and_message_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "QUEUESTREAM_SOURCE_TIMEZONE": "Nowhere/Land"}
    done = _run(["refresh"], env)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("ConfigurationError: invalid settings: source_timezone")
    assert "Traceback" not in done.stderr


def test_usage_errors_show_usage() -> None:
    done = _run(["sim", "--bogus"], {**os.environ})
    assert done.returncode == 2
    assert "No such option: --bogus" in done.stderr
    assert "Traceback" not in done.stderr


def test_consume_and_verify_from_the_command_line(
    sqlite_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    env = _env(sqlite_url, kafka_bootstrap, unique)
    env["QUEUESTREAM_IDLE_SECONDS"] = "0.5"
    target = f"sqlite:///{tmp_path / 'shipping.db'}"
    assert _run(["sim", "--actions", "300", "--seed", "5"], env).returncode == 0
    assert _run(["refresh"], env).returncode == 0

    empty = _run(["verify", "shipping", "--target", target], env)
    assert empty.returncode == 1
    assert "ConfigurationError" in empty.stderr
    assert "queuestream consume shipping" in empty.stderr, "says what to do"

    consumed = _run(["consume", "shipping", "--target", target, "--until-idle"], env)
    assert consumed.returncode == 0, consumed.stderr
    assert "synchronized" in consumed.stdout and "0 errors" in consumed.stdout

    verified = _run(["verify", "shipping", "--target", target, "--json"], env)
    assert verified.returncode == 0, verified.stdout
    report = json.loads(verified.stdout)
    assert report["ok"] is True
    assert {t["table"] for t in report["tables"]} >= {"shipments", "shipment_lines"}

    engine = create_engine(target)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE order_lines SET quantity = quantity + 1 WHERE line = 1"))
    engine.dispose()
    tampered = _run(["verify", "shipping", "--target", target], env)
    assert tampered.returncode == 1, tampered.stdout
    assert "DIFFERENT" in tampered.stdout
    assert "differs from the source" in tampered.stdout


def test_refresh_never_writes_the_source_and_names_what_is_missing(tmp_path: Path) -> None:
    """The producer is read-only on the sync database: no table is created for it, and
    a missing table or column stops ``refresh`` with one line naming it."""
    empty = tmp_path / "empty.db"
    url = f"sqlite:///{empty}"
    sa.create_engine(url).connect().close()  # an existing, empty database
    env = {**os.environ, "QUEUESTREAM_SOURCE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = _run(["refresh"], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1:] == [
        f"SourceSchemaError: the sync database sqlite:///{empty} has no table Customers "
        "(watermark mode reads it): point --source (QUEUESTREAM_SOURCE_URL) at the sync "
        "database, or run 'queuestream sim' to create a simulated one"
    ]
    with sa.create_engine(url).connect() as conn:
        assert sa.inspect(conn).get_table_names() == []  # nothing was created

    # A sync database whose Orders lack a column the refresh reads.
    engine = sa.create_engine(url)
    tables = [t for n, t in Base.metadata.tables.items() if n != "Orders"]
    Base.metadata.create_all(engine, tables=tables)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "Orders" ("OrderID" INTEGER PRIMARY KEY)')
    engine.dispose()
    result = _run(["refresh"], env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("SourceSchemaError: table Orders of the sync database")
    assert "has no column CustomerID" in last
    assert "Traceback" not in result.stderr


def test_a_consumer_of_a_prefix_no_producer_wrote_says_so_and_the_producer_names_the_count(
    sqlite_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """A mistyped topic prefix read nothing without a word; a producer finding topics a
    consumer made with another partition count used it without one."""
    env = {**_env(sqlite_url, kafka_bootstrap, unique), "QUEUESTREAM_IDLE_SECONDS": "0.5"}
    target = f"sqlite:///{tmp_path / 'shipping.db'}"
    first = _run(["consume", "shipping", "--target", target, "--until-idle"], env)
    assert first.returncode == 0, first.stderr
    assert f"no producer has published to the topic prefix '{unique}' yet" in first.stderr
    again = _run(["consume", "shipping", "--target", target, "--until-idle"], env)
    assert again.returncode == 0 and "no producer has published" not in again.stderr

    assert _run(["sim", "--actions", "20"], env).returncode == 0
    produced = _run(["refresh"], {**env, "QUEUESTREAM_PARTITIONS": "6"})
    assert produced.returncode == 0, produced.stderr
    assert f"the change topics {unique}.* have 3 partitions" in produced.stderr
    assert "the partitions setting (6)" in produced.stderr
