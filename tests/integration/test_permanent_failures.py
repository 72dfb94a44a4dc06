"""Mistakes that no retry can fix stop every command at once with one line (issue #13).

Each test runs the real ``queuestream`` command against the real PostgreSQL and
Kafka with one permanent mistake, and checks that it exits 1 within
:data:`PROMPT` seconds, that stderr holds exactly one ``Type: message`` line and no
traceback, and that no password is printed. Consumers are run with
``--until-idle``: before the classification they retried such a target forever
as if it were down.

PostgreSQL in the tests trusts loopback connections; the wrong-password tests add
a pg_hba.conf rule that asks one role of their own for its password.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from queuestream.databases import create_engine
from queuestream.sync_schema import create_source_schema
from tests.helpers import cli_env, run_cli

#: Seconds within which a permanent mistake must stop a command (the issue's bound).
PROMPT = 10.0
#: The retries of a command that mistakes the failure for an outage would outlast this.
GIVE_UP = 40.0

PASSWORD = "right-horse-battery"
WRONG = "wrong-staple-4242"
_ERROR_LINE = re.compile(r"^[A-Za-z]+Error: ")


def _fails_at_once(args: list[str], env: dict[str, str]) -> str:
    """Run the command; return its one error line after checking how it failed."""
    started = time.monotonic()
    try:
        done = run_cli(args, env, timeout=GIVE_UP)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"queuestream {' '.join(args)} still ran after {GIVE_UP:g}s: {exc.stderr!r}")
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert elapsed < PROMPT, f"took {elapsed:.1f}s to stop: {output}"
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert WRONG not in output
    errors = [line for line in done.stderr.splitlines() if _ERROR_LINE.match(line)]
    assert len(errors) == 1, done.stderr
    return errors[0]


def _env(bootstrap: str, prefix: str, **more: str) -> dict[str, str]:
    env = cli_env(bootstrap, prefix, QUEUESTREAM_BROKER_TIMEOUT_SECONDS="5")
    for name in ("QUEUESTREAM_CONFIG", "QUEUESTREAM_SOURCE_URL", "QUEUESTREAM_TARGET_URL"):
        env.pop(name, None)
    return {**env, **more}


@pytest.fixture
def password_role(_postgres_admin: sa.Engine, unique: str) -> Iterator[str]:
    """A role that must give its password (scram-sha-256); returns its name."""
    role = f"qs_pw_{unique}".lower()
    with _postgres_admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
        conn.exec_driver_sql(f'GRANT ALL ON DATABASE postgres TO "{role}"')
        hba_file = conn.exec_driver_sql("SHOW hba_file").scalar_one()
        try:
            rules = conn.execute(sa.select(sa.func.pg_read_file(hba_file))).scalar_one()
            # COPY cannot take bind parameters: the lines go in as literals. It opens its
            # file before it runs its query, so the rules were read first.
            lines = [f"host all {role} 127.0.0.1/32 scram-sha-256", *rules.splitlines()]
            if any("\\" in line for line in lines):
                pytest.fail(
                    "pg_hba.conf holds backslashes, which COPY would escape: run these tests "
                    "against the PostgreSQL that tests/services.py starts",
                    pytrace=False,
                )
            rows = " UNION ALL ".join(
                f"SELECT {n} AS n, {_literal(line.replace(chr(9), ' ') or '#')} AS line"
                for n, line in enumerate(lines)
            )
            conn.exec_driver_sql(
                f"COPY (SELECT line FROM ({rows}) AS v ORDER BY n) TO {_literal(hba_file)}"
            )
            conn.execute(sa.select(sa.func.pg_reload_conf()))
        except sa.exc.DBAPIError as exc:
            pytest.fail(
                f"cannot make PostgreSQL ask for a password here ({exc.orig}): the tests need "
                "a superuser on a server whose pg_hba.conf they may rewrite, as tests/services.py "
                "starts one",
                pytrace=False,
            )
    # The reload is asynchronous: wait until the rule holds.
    right = make_url(_postgres_admin.url).set(username=role, password=PASSWORD)
    wrong = right.set(password=WRONG)
    deadline = time.monotonic() + PROMPT
    while True:
        probe = sa.create_engine(wrong, poolclass=sa.pool.NullPool)
        try:
            probe.connect().close()
        except sa.exc.OperationalError:
            break
        finally:
            probe.dispose()
        assert time.monotonic() < deadline, "pg_hba.conf rule did not take effect"
        time.sleep(0.1)
    engine = sa.create_engine(right, poolclass=sa.pool.NullPool)
    engine.connect().close()  # the right password works
    engine.dispose()
    yield role


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _url(admin: sa.Engine, **parts: str) -> str:
    url = make_url(admin.url).set(drivername="postgresql", **parts)  # type: ignore[arg-type]
    return url.render_as_string(hide_password=False)


def test_a_wrong_source_password_stops_refresh_and_produce(
    _postgres_admin: sa.Engine, password_role: str, kafka_bootstrap: str, unique: str
) -> None:
    source = _url(_postgres_admin, username=password_role, password=WRONG)
    env = _env(kafka_bootstrap, unique, QUEUESTREAM_SOURCE_URL=source)
    for args in (["refresh"], ["produce", "--interval", "1"]):
        line = _fails_at_once(args, env)
        assert line.startswith("DatabaseAccessError: database postgresql+psycopg://"), line
        assert f'password authentication failed for user "{password_role}"' in line
        assert "check the user name and password" in line


def test_a_wrong_target_password_stops_the_consumer(
    _postgres_admin: sa.Engine, password_role: str, kafka_bootstrap: str, unique: str
) -> None:
    target = _url(_postgres_admin, username=password_role, password=WRONG)
    env = _env(kafka_bootstrap, unique)
    for args in (
        ["consume", "accounting", "--target", target, "--until-idle"],
        ["replay", "--group", f"{unique}-group", "--to-earliest", "--target", target, "--execute"],
    ):
        line = _fails_at_once(args, env)
        assert line.startswith("DatabaseAccessError: database postgresql+psycopg://"), line
        assert "password authentication failed" in line


def test_a_database_that_does_not_exist(
    _postgres_admin: sa.Engine, kafka_bootstrap: str, unique: str
) -> None:
    missing = f"qs_missing_{unique}".lower()
    url = _url(_postgres_admin, database=missing)
    env = _env(kafka_bootstrap, unique, QUEUESTREAM_SOURCE_URL=url)
    for args in (
        ["refresh"],
        ["consume", "shipping", "--target", url, "--until-idle"],
        # These three named it "(this command's database)", the CLI's catch-all.
        ["sim", "--actions", "1"],
        ["rebuild", "accounting", "--target", url, "--as-of", "2026-01-01T00:00:00+00:00"],
        ["replay", "--group", f"{unique}-group", "--to-earliest", "--target", url],
    ):
        line = _fails_at_once(args, env)
        assert line.startswith("DatabaseAccessError: database postgresql+psycopg://"), line
        assert f"/{missing}: " in line, line  # the database is named by its URL
        assert f'database "{missing}" does not exist' in line
        assert "create it or fix the database name in the URL" in line


def test_a_sqlite_target_path_that_is_a_directory(
    tmp_path: Path, kafka_bootstrap: str, unique: str
) -> None:
    env = _env(kafka_bootstrap, unique)
    args = ["consume", "accounting", "--target", f"sqlite:///{tmp_path}", "--until-idle"]
    line = _fails_at_once(args, env)
    assert line.startswith(f"DatabaseAccessError: database sqlite:///{tmp_path}: "), line
    assert "unable to open database file" in line
    assert "not a folder itself" in line


def test_a_table_missing_in_a_postgresql_source(
    postgres_url: str, kafka_bootstrap: str, unique: str
) -> None:
    env = _env(kafka_bootstrap, unique, QUEUESTREAM_SOURCE_URL=postgres_url)
    line = _fails_at_once(["refresh"], env)
    assert line.startswith("SourceSchemaError: the sync database postgresql"), line
    assert "has no table Customers" in line


def test_malformed_toml_names_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "queuestream.toml"
    config.write_text('topic_prefix = "shop"\n\nsettle_seconds = = 5\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUESTREAM_")}
    for args in (["--config", str(config), "refresh"], ["refresh"]):
        run_env = env if args[0] == "--config" else {**env, "QUEUESTREAM_CONFIG": str(config)}
        line = _fails_at_once(args, run_env)
        assert line.startswith(f"SettingsFileError: config file {config} is not valid TOML"), line
        assert "line 3, column 18" in line


@pytest.mark.parametrize("command", ["refresh", "produce"])
def test_a_malformed_since_stops_before_anything_connects(
    tmp_path: Path, unique: str, command: str
) -> None:
    # Nothing listens at the broker's address and the source does not exist yet: a
    # command that connected first would wait for the broker or create the file.
    source = tmp_path / "sync.db"
    env = _env(
        "127.0.0.1:1",
        unique,
        QUEUESTREAM_SOURCE_URL=f"sqlite:///{source}",
        QUEUESTREAM_BROKER_TIMEOUT_SECONDS="30",
    )
    line = _fails_at_once([command, "--since", "last tuesday"], env)
    assert line == (
        "ConfigurationError: --since 'last tuesday' is not a date: use 2017-01-01, "
        "2017-01-01T08:00, 2017-01-01T08:00:00+02:00 or 1/1/2017"
    )
    assert not source.exists()


def test_a_replication_factor_above_the_brokers_stops_refresh_and_consume(
    tmp_path: Path, kafka_bootstrap: str, unique: str
) -> None:
    # The test broker is a single broker: topics with three replicas cannot be created.
    source = f"sqlite:///{tmp_path / 'sync.db'}"
    engine = create_engine(source, writer=True)
    try:
        create_source_schema(engine)
    finally:
        engine.dispose()
    env = _env(
        kafka_bootstrap,
        unique,
        QUEUESTREAM_SOURCE_URL=source,
        QUEUESTREAM_REPLICATION_FACTOR="3",
    )
    target = f"sqlite:///{tmp_path / 'target.db'}"
    for args in (["refresh"], ["consume", "accounting", "--target", target, "--until-idle"]):
        line = _fails_at_once(args, env)
        assert line.startswith(f"BrokerAccessError: Kafka at {kafka_bootstrap}: cannot create "), (
            line
        )
        assert f"topic {unique}." in line
        assert line.endswith("set replication_factor to at most the number of brokers"), line
