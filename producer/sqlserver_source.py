"""What reading a SQL Server sync database needs beyond SQLAlchemy's dialect.

:class:`~producer.source_reader.SourceReader` calls these where SQL Server differs:

* **Before the first refresh** (:func:`check_sqlserver_source`): every contract column
  has a SQL Server type that maps to the contract exactly
  (:func:`queuestream.sqlserver.column_type_problem`); the server's clock runs in
  ``source_timezone`` (its current UTC offset, ``SYSDATETIMEOFFSET()``, equals the
  zone's); in watermark mode the database allows SNAPSHOT isolation.
* **The frozen snapshot** (:data:`SNAPSHOT`): watermark mode reads the six tables in one
  SNAPSHOT transaction (row versions: writers are neither blocked nor seen mid-way);
  REPEATABLE READ on SQL Server would take shared locks that block Exigo's sync.
  Procedure mode reads the queue tables that ``queue.Refresh`` froze, under the
  database's default READ COMMITTED, and needs no database option.
* **The safe bound** (:class:`SqlServerBound`, watermark mode): the start of the oldest
  transaction open in this database (``sys.dm_tran_*``), read before the snapshot, less
  a clock allowance, floored to a time DATETIME holds exactly. Those views need VIEW
  SERVER STATE (SQL Server 2019 and before) or VIEW SERVER PERFORMANCE STATE (2022
  on), or VIEW DATABASE STATE on Azure SQL Database; without it the bound stays
  ``settle_seconds`` behind the server's clock, with one warning.
* **The refresh procedure** (:func:`run_procedure`): ``EXEC queue.Refresh`` runs with
  NOCOUNT on, and whatever results it returns are read to the end before the commit:
  SQL Server runs a procedure only as far as its client reads, and a commit with
  results pending fails.
* **Key order** (:func:`key_after`): T-SQL has no row-value comparison
  (``(a, b) > (x, y)``), so the sweep's "after this key" is spelled out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from queuestream.databases import describe_url, retriable_outages
from queuestream.errors import SourceSchemaError
from queuestream.settings import Settings
from queuestream.sqlserver import column_type_problem, datetime_bound

__all__ = [
    "CLOCK_SQL",
    "IN_FLIGHT_SQL",
    "SNAPSHOT",
    "SNAPSHOT_ALLOWED_SQL",
    "SqlServerBound",
    "check_sqlserver_source",
    "column_problem",
    "earliest_utc",
    "key_after",
    "run_procedure",
]

log = logging.getLogger(__name__)

#: The isolation level of watermark mode's frozen snapshot on SQL Server.
SNAPSHOT = "SNAPSHOT"

#: The server's clock (UTC), its current offset from UTC in minutes, and whether this
#: login may read the transaction views (server-wide on SQL Server, per database on
#: Azure SQL Database, engine edition 5).
CLOCK_SQL = sa.text(
    """
    SELECT SYSUTCDATETIME() AS now_utc,
           DATEPART(TZOFFSET, SYSDATETIMEOFFSET()) AS offset_minutes,
           CASE WHEN CAST(SERVERPROPERTY('EngineEdition') AS int) = 5
                THEN CASE WHEN COALESCE(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE',
                                                          'VIEW DATABASE STATE'), 0) = 1
                            OR COALESCE(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE',
                                                          'VIEW DATABASE PERFORMANCE STATE'),
                                        0) = 1
                          THEN 1 ELSE 0 END
                ELSE CASE WHEN COALESCE(HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW SERVER STATE'), 0) = 1
                            OR COALESCE(HAS_PERMS_BY_NAME(NULL, NULL,
                                                          'VIEW SERVER PERFORMANCE STATE'), 0) = 1
                          THEN 1 ELSE 0 END
           END AS sees_transactions
    """
)

#: The start (server local time) of the oldest transaction that may still commit a row
#: of this database: transactions of other sessions working in it, and read/write
#: transactions of any session that have written to it (a session in another database).
IN_FLIGHT_SQL = sa.text(
    """
    SELECT MIN(t.transaction_begin_time) AS oldest_local
      FROM sys.dm_tran_active_transactions AS t
     WHERE t.transaction_id IN (
             SELECT st.transaction_id
               FROM sys.dm_tran_session_transactions AS st
               JOIN sys.dm_exec_sessions AS s ON s.session_id = st.session_id
              WHERE s.database_id = DB_ID() AND st.session_id <> @@SPID
             UNION
             SELECT dt.transaction_id
               FROM sys.dm_tran_database_transactions AS dt
              WHERE dt.database_id = DB_ID() AND dt.database_transaction_type = 1
                AND NOT EXISTS (SELECT 1 FROM sys.dm_tran_session_transactions AS own
                                 WHERE own.transaction_id = dt.transaction_id
                                   AND own.session_id = @@SPID))
    """
)

#: Whether the database allows SNAPSHOT isolation (sys.databases: visible to its users).
SNAPSHOT_ALLOWED_SQL = sa.text(
    "SELECT snapshot_isolation_state FROM sys.databases WHERE database_id = DB_ID()"
)


def earliest_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """A naive local time of ``zone`` as UTC; in the hour that repeats when clocks go back,
    the earlier of its two readings (a bound must not pass a change)."""
    return min(local.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))


def key_after(columns: Sequence[sa.ColumnElement[Any]], after: tuple[int, ...]) -> Any:
    """``(c1, c2, ...) > (a1, a2, ...)`` in lexicographic order, without a row-value
    comparison: ``c1 > a1 OR (c1 = a1 AND (c2 > a2 OR ...))``."""
    condition: Any = columns[-1] > after[len(columns) - 1]
    for column, value in zip(
        reversed(columns[:-1]), reversed(after[: len(columns) - 1]), strict=True
    ):
        condition = sa.or_(column > value, sa.and_(column == value, condition))
    return condition


def run_procedure(conn: sa.Connection, statement: str, params: dict[str, Any]) -> int:
    """Run the refresh ``statement`` (``EXEC queue.Refresh``) with NOCOUNT on, reading every
    result set it returns; the number of result sets read."""
    result = conn.execute(sa.text(f"SET NOCOUNT ON; {statement}"), params)
    cursor = result.cursor  # None once SQLAlchemy has closed it: nothing came back
    sets = 0
    while cursor is not None:
        if cursor.description is not None:
            cursor.fetchall()
            sets += 1
        if not cursor.nextset():
            break
    result.close()
    return sets


def check_sqlserver_source(engine: sa.Engine, settings: Settings) -> None:
    """Stop with one line if the server's clock runs in another zone than
    ``source_timezone``, or if watermark mode cannot take a SNAPSHOT."""
    where = describe_url(engine.url)
    with (
        retriable_outages(engine),
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
    ):
        now_utc, offset_minutes, _sees = conn.execute(CLOCK_SQL).one()
        allowed = None
        if settings.refresh_mode == "watermark":
            allowed = conn.execute(SNAPSHOT_ALLOWED_SQL).scalar()
    zone = settings.zone
    expected = now_utc.replace(tzinfo=UTC).astimezone(zone).utcoffset()
    found = timedelta(minutes=int(offset_minutes))
    if expected != found:
        msg = (
            f"source_timezone {settings.source_timezone} is UTC{_offset(expected)} now, but the "
            f"clock of the SQL Server {where} runs at UTC{_offset(found)}: set source_timezone "
            "to the zone the server stamps ModifiedDate in"
        )
        raise SourceSchemaError(msg)
    if allowed is not None and int(allowed) != 1:
        msg = (
            f"the SQL Server database {where} does not allow SNAPSHOT isolation, which watermark "
            "mode reads the six tables in: have a DBA run ALTER DATABASE ... SET "
            "ALLOW_SNAPSHOT_ISOLATION ON, or use procedure mode (the default for SQL Server)"
        )
        raise SourceSchemaError(msg)


def column_problem(
    table: str, column: str, contract: sa.types.TypeEngine[Any], found: Any
) -> SourceSchemaError | None:
    """The error for a SQL Server column whose type does not map to the contract's."""
    problem = column_type_problem(contract, found)
    if problem is None:
        return None
    return SourceSchemaError(
        f"column {table}.{column} of the SQL Server sync database cannot be read exactly: "
        f"{problem} (see queuestream/sqlserver.py)"
    )


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta(0)).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class SqlServerBound:
    """Watermark mode's safe bound on SQL Server (see the module's docstring)."""

    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._warned_hidden = False

    def safe_end(self) -> datetime:
        settings = self.settings
        with (
            retriable_outages(self.engine),
            self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        ):
            now_utc, _offset_minutes, sees = conn.execute(CLOCK_SQL).one()
            oldest = conn.execute(IN_FLIGHT_SQL).scalar() if sees else None
        now = now_utc.replace(tzinfo=UTC)
        if not sees:
            if not self._warned_hidden:
                self._warned_hidden = True
                log.warning(
                    "this login cannot read sys.dm_tran_active_transactions, so the transactions "
                    "in flight cannot bound the watermark: it stays settle_seconds behind the "
                    "server's clock (GRANT VIEW SERVER STATE, or VIEW SERVER PERFORMANCE STATE "
                    "on SQL Server 2022, or VIEW DATABASE STATE on Azure SQL Database, to fix)"
                )
            bound = now - timedelta(seconds=settings.settle_seconds)
        else:
            bound = now if oldest is None else min(now, earliest_utc(oldest, settings.zone))
            bound -= timedelta(seconds=settings.pg_clock_allowance_seconds)
        return datetime_bound(bound)
