"""Mistakes in what the user gives (URLs, variables, dates, files) stop a command at once
with one line that says what is wrong, before anything connects: no traceback, no
retry, no file created, no password repeated."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from queuestream import databases
from queuestream.databases import create_engine, describe_url
from queuestream.errors import ConfigurationError, DatabaseAccessError, SettingsFileError
from queuestream.failures import database_failure
from queuestream.settings import load_settings
from tests.helpers import run_cli

#: Nothing listens here: a command that asked the broker would wait, then fail otherwise.
NO_BROKER = "127.0.0.1:1"


def _one_line(args: list[str], tmp_path: Path, **env: str) -> str:
    """Run ``queuestream ARGS`` in ``tmp_path``; it must stop with status 1 and one
    line, no traceback. That line."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUEUESTREAM_")}
    clean |= {"KAFKA_BOOTSTRAP_SERVERS": NO_BROKER, "QUEUESTREAM_BROKER_TIMEOUT_SECONDS": "30"}
    result = subprocess_in(tmp_path, args, {**clean, **env})
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def subprocess_in(
    cwd: Path, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    here = Path.cwd()
    os.chdir(cwd)
    try:
        return run_cli(args, env, timeout=60)
    finally:
        os.chdir(here)


# --- A: PostgreSQL URLs libpq would refuse --------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:pw@127.0.0.1:55432/db?sslmode=bogus", "sslmode 'bogus' is not one of"),
        ("postgresql://u:pw@127.0.0.1:99999/db", "port '99999' is not a port number"),
        ("postgresql://u:pw@127.0.0.1:0/db", "port '0' is not a port number"),
        ("postgresql://u:pw@/db?host=h1:5432&host=h2:70000", "port '70000'"),
        ("postgresql://u:pw@h/db?nosuchoption=1", 'invalid connection option "nosuchoption"'),
        ("postgresql://u:pw@h/db?connect_timeout=soon", "connect_timeout 'soon' is not a whole"),
        ("postgresql://u:pw@h/db?target_session_attrs=rw", "target_session_attrs 'rw'"),
    ],
)
@pytest.mark.parametrize("setting", ["source_url", "target_url"])
def test_postgresql_urls_libpq_refuses_are_settings_errors(
    url: str, says: str, setting: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None, **{setting: url})
    message = str(caught.value)
    assert f"{setting}:" in message
    assert says in message
    assert ":pw@" not in message
    with pytest.raises(ConfigurationError, match=says):
        create_engine(url)  # the same check for a URL that is not a setting


def test_a_password_given_as_a_query_option_is_not_shown() -> None:
    url = "postgresql://u@h/db?password=hunter2&sslmode=bogus"
    with pytest.raises(ConfigurationError) as caught:
        load_settings(source_url=url)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in describe_url(url)


def test_good_postgresql_urls_pass() -> None:
    for url in (
        "postgresql://u:pw@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=/ca.pem",
        "postgresql://u@/db?host=/run/postgresql",
        "postgresql://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
        "postgresql+psycopg://u@h/db?connect_timeout=5&application_name=queuestream",
    ):
        assert load_settings(source_url=url).source_url == url
        databases.parse_url(url)


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=127.0.0.1 port=99999",
        "host=127.0.0.1 port=1 sslmode=bogus",
        "host=127.0.0.1 port=1 nosuchoption=1",
        "host=127.0.0.1 port=1 keepalives=x",
    ],
)
def test_connection_options_libpq_refuses_are_not_outages(conninfo: str) -> None:
    """Should such a URL reach libpq anyway, its refusal stops the command: it is not
    the database being away, which a retry would wait for."""
    with pytest.raises(psycopg.Error) as caught:
        psycopg.connect(conninfo, connect_timeout=1)
    failure = database_failure(caught.value, "postgresql://u:***@127.0.0.1/db")
    assert isinstance(failure, DatabaseAccessError), failure
    assert "a connection option in the URL is invalid" in str(failure)


def test_a_bad_postgresql_url_stops_produce_at_once(tmp_path: Path) -> None:
    line = _one_line(
        ["--source", "postgresql://u:pw@127.0.0.1:55432/db?sslmode=bogus", "produce"], tmp_path
    )
    assert line.startswith("ConfigurationError: invalid settings: source_url: "), line
    assert "sslmode 'bogus'" in line
    line = _one_line(
        ["consume", "accounting", "--target", "postgresql://u:pw@127.0.0.1:99999/db"], tmp_path
    )
    assert line.startswith("ConfigurationError: invalid settings: target_url: "), line
    assert "port '99999' is not a port number: give one from 1 to 65535" in line


# --- B: a SQLite URL with two slashes ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown", "meant"),
    [
        ("sqlite://var/exigo-sync.db", "sqlite://var/exigo-sync.db", "sqlite:///var/exigo-sync.db"),
        ("sqlite://u:pw@/x.db", "sqlite://u:***@/x.db", "sqlite:///x.db"),
    ],
)
def test_a_sqlite_url_with_two_slashes_says_how_many(url: str, shown: str, meant: str) -> None:
    expected = (
        f"{shown}: a SQLite URL has three slashes before a relative path ({meant}) and "
        "four before an absolute one (sqlite:////data/x.db)"
    )
    with pytest.raises(ConfigurationError) as caught:
        load_settings(source_url=url)
    assert expected in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        create_engine(url)
    assert str(caught.value) == expected


def test_a_sqlite_url_with_two_slashes_stops_commands_in_one_line(tmp_path: Path) -> None:
    line = _one_line(["--source", "sqlite://var/exigo-sync.db", "refresh"], tmp_path)
    assert line.startswith("ConfigurationError: invalid settings: source_url: "), line
    assert "(sqlite:///var/exigo-sync.db)" in line
    line = _one_line(["verify", "accounting", "--target", "sqlite://var/accounting.db"], tmp_path)
    assert "target_url: " in line and "(sqlite:///var/accounting.db)" in line
    line = _one_line(["--source", "sqlite://u:pw@/x.db", "refresh"], tmp_path)
    assert "sqlite://u:***@/x.db" in line and ":pw@" not in line
    line = _one_line(
        ["replay", "--group", "g", "--to-earliest", "--target", "sqlite://u:pw@/x.db"], tmp_path
    )
    assert "sqlite://u:***@/x.db: a SQLite URL has three slashes" in line, line
    assert not list(tmp_path.iterdir())


# --- D: a database the command reads is never created -----------------------------------


def test_a_missing_sqlite_database_that_should_exist_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nonexistent" / "dir" / "x.db"
    with pytest.raises(ConfigurationError) as caught:
        create_engine(f"sqlite:///{path}", existing="the sync database")
    assert str(caught.value).startswith(
        f"no such file: {path} (the sync database sqlite:///{path}): check the path"
    )
    assert not (tmp_path / "nonexistent").exists()
    # A target that is written may still be made, folder and all.
    engine = create_engine(f"sqlite:///{path}", writer=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER)")
    engine.dispose()
    create_engine(f"sqlite:///{path}", existing="the sync database").dispose()


def test_commands_that_read_a_missing_sqlite_file_stop_and_create_nothing(
    tmp_path: Path,
) -> None:
    line = _one_line(["--source", "sqlite:///nonexistent/dir/x.db", "refresh"], tmp_path)
    assert line == (
        "ConfigurationError: no such file: nonexistent/dir/x.db (the sync database "
        "sqlite:///nonexistent/dir/x.db): check the path (a database this command reads "
        "is never created)"
    )
    line = _one_line(["--source", "sqlite:///nonexistent/x.db", "produce"], tmp_path)
    assert "no such file: nonexistent/x.db (the sync database" in line
    line = _one_line(["verify", "accounting", "--source", "sqlite:///missing.db"], tmp_path)
    assert "no such file: missing.db (the sync database sqlite:///missing.db)" in line
    source = tmp_path / "sync.db"
    sqlite3.connect(source).close()
    line = _one_line(
        ["verify", "accounting", "--source", f"sqlite:///{source}", "--target", "sqlite:///t.db"],
        tmp_path,
    )
    assert "no such file: t.db (the accounting target sqlite:///t.db)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sync.db"]


# --- C: a settings variable that is not JSON ----------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUEUESTREAM_KAFKA", '{"sasl.password": "hunter2",'),
        ("QUEUESTREAM_KAFKA_SECRET_FILES", "{hunter2"),
        ("QUEUESTREAM_SENSITIVE_COLUMNS", "hunter2"),
    ],
)
def test_a_variable_that_is_not_json_is_named_not_shown(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable} is not valid JSON ("), message
    assert "give a JSON object" in message
    assert "hunter2" not in message


def test_a_variable_that_is_not_json_stops_a_command_in_one_line(tmp_path: Path) -> None:
    line = _one_line(["refresh"], tmp_path, QUEUESTREAM_KAFKA='{"sasl.password": "hunter2",')
    assert line.startswith("ConfigurationError: QUEUESTREAM_KAFKA is not valid JSON"), line
    assert "hunter2" not in line


# --- E: times and durations at the calendar's ends ------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["replay", "--group", "g", "--by-duration", "1000000d"],
            "--by-duration '1000000d' reaches back before 1970-01-01",
        ),
        (
            ["replay", "--group", "g", "--by-duration", "99999999999d"],
            "--by-duration '99999999999d' reaches back before 1970-01-01",
        ),
        (
            ["rebuild", "accounting", "--target", "sqlite:///x.db", "--as-of", "0001-01-01"],
            "--as-of '0001-01-01' is out of range: give a time from 1970-01-01",
        ),
        (
            ["replay", "--group", "g", "--to-datetime", "9999-12-31T23:59:59-05:00"],
            "--to-datetime '9999-12-31T23:59:59-05:00' is out of range",
        ),
        (
            ["refresh", "--since", "9999-12-31T23:59:59-05:00"],
            "--since '9999-12-31T23:59:59-05:00' is out of range: give a time from 0001-01-02 "
            "to 9999-12-30",
        ),
    ],
)
def test_times_past_the_ends_stop_in_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    sqlite3.connect(tmp_path / "var" / "exigo-sync.db").close()
    line = _one_line(args, tmp_path)
    assert line.startswith(f"ConfigurationError: {says}"), line


# --- F: files that are not UTF-8, or begin with a byte-order mark ----------------------------


def test_an_offsets_file_with_a_byte_order_mark_or_a_header_reads(tmp_path: Path) -> None:
    from consumers.replay_inputs import read_offsets_file

    path = tmp_path / "offsets.csv"
    path.write_bytes(b"\xef\xbb\xbfexigo.orders,0,5\r\nexigo.orders,1,7\r\n")
    assert read_offsets_file(path) == {("exigo.orders", 0): 5, ("exigo.orders", 1): 7}
    path.write_text("topic,partition,offset\nexigo.orders,0,5\n", encoding="utf-8-sig")
    assert read_offsets_file(path) == {("exigo.orders", 0): 5}


def test_files_that_are_not_utf8_are_named(tmp_path: Path) -> None:
    from consumers.replay_inputs import read_offsets_file

    offsets = tmp_path / "offsets.csv"
    offsets.write_text("exigo.orders,0,5\n", encoding="utf-16")
    with pytest.raises(ConfigurationError, match=f"offsets file {offsets} is not UTF-8 text"):
        read_offsets_file(offsets)
    config = tmp_path / "queuestream.toml"
    config.write_text('topic_prefix = "shop"\n', encoding="utf-16")
    with pytest.raises(SettingsFileError, match=f"config file {config} is not UTF-8 text"):
        load_settings(config)
    line = _one_line(["--config", str(config), "refresh"], tmp_path)
    assert line == f"SettingsFileError: config file {config} is not UTF-8 text: save it as UTF-8"


def test_a_config_file_with_a_byte_order_mark_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "queuestream.toml"
    config.write_text('topic_prefix = "shop"\n', encoding="utf-8-sig")
    assert load_settings(config).topic_prefix == "shop"
    monkeypatch.setenv("QUEUESTREAM_CONFIG", str(config))
    assert load_settings().topic_prefix == "shop"


# --- G: wording ------------------------------------------------------------------------------


def test_two_destinations_are_told_to_be_one() -> None:
    from consumers.replay_inputs import ReplaySpec, parse_duration

    with pytest.raises(ConfigurationError) as caught:
        ReplaySpec(to_earliest=True, by_duration=parse_duration("1h"))
    assert str(caught.value) == (
        "--by-duration and --to-earliest were given: say where to move with only one of them"
    )
    with pytest.raises(ConfigurationError, match="say where to move: one of --to-datetime"):
        ReplaySpec()


def test_a_config_file_that_is_a_directory_is_called_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(tmp_path)
    assert str(caught.value) == f"config file {tmp_path} is a directory: give the TOML file in it"


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("postgres://app@db.example:5432/sync", "postgresql://app@db.example:5432/sync"),
        ("POSTGRES+psycopg://app@db/sync", "postgresql+psycopg://app@db/sync"),
        ("postgresql://app@db/sync", "postgresql://app@db/sync"),
    ],
)
def test_libpqs_postgres_scheme_is_taken_as_postgresql(given: str, taken: str) -> None:
    """libpq, psql and hosting providers give ``postgres://``, which SQLAlchemy refuses;
    a setting and a command's URL option take it as ``postgresql://``."""
    assert load_settings(None, source_url=given, target_url=given).source_url == taken
    assert load_settings(None, target_url=given).target_url == taken
    assert databases.parse_url(given).get_backend_name() == "postgresql"
    assert databases.parse_url(given).drivername == taken.split(":")[0]


def test_a_scheme_that_only_starts_like_postgres_is_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database 'postgresx'"):
        load_settings(None, source_url="postgresx://app@db/sync")
