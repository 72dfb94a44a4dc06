"""Watermark mode on SQL Server without a server: the safe bound from the transaction views,
the start-up checks (the server's clock zone, SNAPSHOT allowed) and the snapshot's isolation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from producer.source_reader import FrozenSnapshot, SourceReader
from producer.sqlserver_source import (
    CLOCK_SQL,
    IN_FLIGHT_SQL,
    SNAPSHOT_ALLOWED_SQL,
    SqlServerBound,
    check_sqlserver_source,
)
from queuestream.errors import SourceSchemaError
from queuestream.settings import Settings
from tests.unit.sqlserver_support import DIALECTS, URL, local


class _Server:
    """An engine whose connections answer the safe-bound and check queries as given."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.url = make_url(URL)
        self.asked: list[str] = []

    def connect(self) -> _Server:
        return self

    def execution_options(self, **options: Any) -> _Server:
        assert options == {"isolation_level": "AUTOCOMMIT"}
        return self

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: sa.TextClause) -> Any:
        name = {CLOCK_SQL: "clock", IN_FLIGHT_SQL: "oldest", SNAPSHOT_ALLOWED_SQL: "snapshot"}[
            statement
        ]
        self.asked.append(name)
        answer = self.answers[name]
        return SimpleNamespace(one=lambda: answer, scalar=lambda: answer)


def _bound(server: _Server, **settings: Any) -> datetime:
    values = {"source_url": URL, "source_timezone": "America/Chicago", **settings}
    return SqlServerBound(cast("sa.Engine", server), Settings(**values)).safe_end()


def test_the_bound_is_the_oldest_transaction_in_flight_less_the_allowance() -> None:
    now = local(2026, 7, 1, 17, 0, 0, 123456)  # SYSUTCDATETIME(): UTC, naive
    server = _Server(clock=(now, -300, 1), oldest=local(2026, 7, 1, 11, 59, 0, 3000))
    assert _bound(server) == datetime(2026, 7, 1, 16, 58, 59, 0, UTC)
    assert server.asked == ["clock", "oldest"]
    idle = _Server(clock=(now, -300, 1), oldest=None)
    assert _bound(idle, pg_clock_allowance_seconds=0) == datetime(2026, 7, 1, 17, 0, 0, 120000, UTC)


def test_a_transaction_open_in_the_repeated_hour_bounds_at_its_earlier_reading() -> None:
    now = local(2026, 11, 1, 7, 40)  # 01:40 CST, the second time 01:40 came
    server = _Server(clock=(now, -360, 1), oldest=local(2026, 11, 1, 1, 35))
    # 01:35 could be 06:35Z (CDT) or 07:35Z (CST): the bound takes the earlier.
    assert _bound(server, pg_clock_allowance_seconds=0) == datetime(2026, 11, 1, 6, 35, tzinfo=UTC)


def test_without_view_server_state_the_bound_stays_settle_seconds_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = _Server(clock=(local(2026, 7, 1, 17, 0, 0, 123456), -300, 0))
    assert _bound(server, settle_seconds=5) == datetime(2026, 7, 1, 16, 59, 55, 120000, UTC)
    assert server.asked == ["clock"]  # the transaction views would refuse this login
    assert "GRANT VIEW SERVER STATE" in caplog.text


def test_the_server_clock_must_run_in_source_timezone() -> None:
    now = local(2026, 7, 1, 17, 0)
    settings = Settings(source_url=URL, source_timezone="America/Chicago")
    check_sqlserver_source(cast("sa.Engine", _Server(clock=(now, -300, 1))), settings)
    with pytest.raises(SourceSchemaError, match=r"UTC-05:00 now.*runs at UTC\+00:00"):
        check_sqlserver_source(cast("sa.Engine", _Server(clock=(now, 0, 1))), settings)
    # In winter Chicago is UTC-6: the check compares the offsets in force now.
    winter = _Server(clock=(local(2026, 1, 15, 17, 0), -360, 1))
    check_sqlserver_source(cast("sa.Engine", winter), settings)


def test_watermark_mode_needs_snapshot_isolation_allowed() -> None:
    clock = (local(2026, 7, 1, 17, 0), -300, 1)
    settings = Settings(source_url=URL, source_timezone="America/Chicago", refresh_mode="watermark")
    check_sqlserver_source(cast("sa.Engine", _Server(clock=clock, snapshot=1)), settings)
    with pytest.raises(SourceSchemaError, match="ALLOW_SNAPSHOT_ISOLATION ON"):
        check_sqlserver_source(cast("sa.Engine", _Server(clock=clock, snapshot=0)), settings)
    procedure = Settings(source_url=URL, source_timezone="America/Chicago")
    server = _Server(clock=clock)
    check_sqlserver_source(cast("sa.Engine", server), procedure)
    assert server.asked == ["clock"]


class _Snapshots:
    """An mssql engine that records the isolation level each snapshot is taken in."""

    def __init__(self) -> None:
        self.dialect = DIALECTS["mssqlpython"]
        self.url = make_url(URL)
        self.levels: list[str | None] = []
        self._level: str | None = None

    def connect(self) -> _Snapshots:
        self._level = None
        return self

    def execution_options(self, isolation_level: str) -> _Snapshots:
        self._level = isolation_level
        return self

    def begin(self) -> _Snapshots:
        self.levels.append(self._level)
        return self

    def __enter__(self) -> _Snapshots:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(("mode", "level"), [("watermark", "SNAPSHOT"), ("procedure", None)])
def test_watermark_mode_reads_in_a_snapshot_procedure_mode_in_read_committed(
    mode: str, level: str | None
) -> None:
    engine = _Snapshots()
    settings = Settings(source_url=URL, source_timezone="America/Chicago", refresh_mode=mode)
    reader = SourceReader(cast("sa.Engine", engine), settings)
    with reader.frozen() as snapshot:
        assert isinstance(snapshot, FrozenSnapshot)
    assert engine.levels == [level]  # None: the database's default, READ COMMITTED
