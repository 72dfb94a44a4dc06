"""A SQL Server source: its driver (the real import, not a stand-in), its URLs and settings.

No SQL Server runs on this machine; docs/sqlserver.md lists what has
not been run against a live server.
"""

from __future__ import annotations

import sys

import pytest
from sqlalchemy.engine import make_url

from queuestream.databases import create_engine
from queuestream.errors import ConfigurationError
from queuestream.settings import load_settings
from queuestream.sqlserver import sqlserver_url
from tests.unit.sqlserver_support import URL, without_module

# -- the driver -------------------------------------------------------------------------


def test_a_missing_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    without_module(monkeypatch, "mssql_python")
    with pytest.raises(ConfigurationError) as caught:
        create_engine(URL)
    message = str(caught.value)
    assert "mssql_python cannot be imported (No module named 'mssql_python')" in message
    assert "pip install 'queuestream[mssql]'" in message
    assert "s3cret" not in message


def test_a_pyodbc_url_that_cannot_load_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_module(monkeypatch, "pyodbc")
    with pytest.raises(ConfigurationError, match=r"pyodbc cannot be imported.*ODBC Driver 18"):
        create_engine("mssql+pyodbc://sync@db.internal/exigo")


def test_with_the_driver_an_mssql_url_reads_through_mssql_python() -> None:
    engine = create_engine(URL)
    assert (engine.dialect.name, engine.dialect.driver) == ("mssql", "mssqlpython")


def test_sql_server_is_read_never_written() -> None:
    with pytest.raises(ConfigurationError, match="never writes"):
        create_engine(URL, writer=True)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("mssql://h/exigo", "mssql+mssqlpython"),
        ("mssql+mssqlpython://h/exigo", "mssql+mssqlpython"),
        ("mssql+pyodbc://h/exigo", "mssql+pyodbc"),
    ],
)
def test_urls_name_a_supported_driver(url: str, driver: str) -> None:
    assert sqlserver_url(make_url(url)).drivername == driver


def test_other_drivers_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'pymssql' is not supported.*mssqlpython"):
        sqlserver_url(make_url("mssql+pymssql://h/exigo"))


# -- settings ---------------------------------------------------------------------------


def test_a_sql_server_source_runs_its_refresh_procedure_by_default() -> None:
    settings = load_settings(source_url=URL, source_timezone="America/Chicago")
    assert settings.refresh_mode == "procedure"
    assert settings.refresh_statement == "EXEC queue.Refresh"
    assert settings.refresh_since_statement == "EXEC queue.Refresh :since"
    explicit = load_settings(source_url=URL, source_timezone="UTC", refresh_mode="watermark")
    assert explicit.refresh_mode == "watermark"
    assert load_settings().refresh_mode == "watermark"  # SQLite keeps its default


def test_the_environment_gives_a_sql_server_source_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUESTREAM_SOURCE_URL", URL)
    monkeypatch.setenv("QUEUESTREAM_SOURCE_TIMEZONE", "Europe/Amsterdam")
    assert load_settings().refresh_mode == "procedure"
    monkeypatch.setenv("QUEUESTREAM_REFRESH_MODE", "watermark")
    assert load_settings().refresh_mode == "watermark"


def test_a_sql_server_source_needs_its_time_zone_named() -> None:
    with pytest.raises(ConfigurationError, match=r"set source_timezone to the server's zone"):
        load_settings(source_url=URL)
    with pytest.raises(ConfigurationError, match=r"source_timezone.*IANA"):
        load_settings(source_url=URL, source_timezone="Central Standard Time")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"source_url": "mssql+pymssql://sync:s3cret@h/exigo"}, r"source_url.*'pymssql'"),
        ({"target_url": "mssql://sync:s3cret@h/shipping"}, r"target_url.*a source only"),
        ({"source_url": "oracle://sync:s3cret@h/exigo"}, r"'oracle'.*mssql://"),
    ],
)
def test_sql_server_urls_are_checked(overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        load_settings(None, source_timezone="UTC", **overrides)
    assert "s3cret" not in str(caught.value)


def test_the_command_prints_what_to_install_as_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from queuestream.cli import main

    without_module(monkeypatch, "mssql_python")
    monkeypatch.setenv("QUEUESTREAM_SOURCE_TIMEZONE", "America/Chicago")
    monkeypatch.setattr(sys, "argv", ["queuestream", "--source", URL, "refresh"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "ConfigurationError: the SQL Server driver mssql_python cannot be imported" in err
    assert "pip install 'queuestream[mssql]'" in err  # brackets are not markup to the console
    assert "s3cret" not in err
