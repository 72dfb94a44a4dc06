"""SQL Server as the sync database: its driver, its URLs, and Exigo's column types read exactly.

The real Exigo sync database runs on Microsoft SQL Server. queuestream reads it
through SQLAlchemy's ``mssql+mssqlpython`` dialect (SQLAlchemy 2.1 and later) and
Microsoft's ``mssql-python`` driver, which ``pip install 'queuestream[mssql]'``
installs: its wheels carry Microsoft's ODBC driver, so pip is all a user needs (on
Linux also the system's libltdl7 and Kerberos libraries). ``mssql+pyodbc`` is accepted
for machines that already have unixODBC and Microsoft's ODBC Driver 18 for SQL Server;
other drivers are refused. A bare ``mssql://`` URL means ``mssql+mssqlpython://``.

A SQL Server database is a *source* only: queuestream never writes one (the simulator,
the targets and every writer engine refuse it), as the sync database is read, never
written. The settings check its URL before anything connects
(:func:`check_sqlserver_url`), default it to procedure mode (:func:`sqlserver_defaults`)
and require ``source_timezone``.

How Exigo's column types reach the contract (``schemas/avro``):

* DATETIME, DATETIME2, SMALLDATETIME: a naive datetime in the server's local time,
  the ``source_timezone`` setting, converted to the contract's UTC
  ``timestamp-micros`` exactly (DATETIME keeps 1/300 s, which the driver gives as
  whole milliseconds: .003, .007; DATETIME2(7)'s last digit, 100 ns, is below a
  microsecond and the driver drops it). DATETIMEOFFSET is refused: it carries its own
  offset, which a naive local reading would lose.
* MONEY, SMALLMONEY, DECIMAL, NUMERIC: a Decimal. MONEY arrives with four decimals
  (12.3400); :class:`ContractDecimal` gives it the contract's scale when that is exact
  (12.34) and leaves it alone when not (12.3456), so the encoder refuses it and the
  producer dead-letters it within the error budget, naming table, key and column, as
  for any other database. So does a value with more digits than the contract's
  precision (MONEY holds 15 before the point; the contract's money 14). FLOAT and REAL
  are refused for decimal columns: binary fractions are not exact amounts.
* NVARCHAR, NCHAR, VARCHAR, CHAR, NTEXT, TEXT: a str. NVARCHAR is UTF-16 and accepts a
  lone surrogate, which no UTF-8 string can hold: the encoder refuses it, naming the column.
* BIT: a bool; where the contract has an int, it is written as 0 or 1.
* INT, SMALLINT, TINYINT. BIGINT is refused: the contract's int has 32 bits (and the
  encoder would write a larger value into it rather than refuse it).

:func:`column_type_problem` holds the accepted pairs; the producer checks every column
against it before its first refresh.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import make_url

from queuestream.errors import ConfigurationError

__all__ = [
    "DEFAULT_DRIVER",
    "DRIVERS",
    "SQLSERVER_ZONE_REQUIRED",
    "ContractDecimal",
    "SqlServerDriver",
    "check_sqlserver_url",
    "column_type_problem",
    "contract_decimal",
    "create_sqlserver_engine",
    "datetime_bound",
    "is_sqlserver",
    "is_sqlserver_url",
    "require_driver",
    "sqlserver_defaults",
    "sqlserver_url",
]

INSTALL_EXTRA = "pip install 'queuestream[mssql]'"


@dataclass(frozen=True, slots=True)
class SqlServerDriver:
    module: str  # what the dialect imports
    install: str  # what to do when it cannot


#: The drivers a SQL Server URL may name (``mssql+<driver>://``).
DRIVERS = {
    "mssqlpython": SqlServerDriver("mssql_python", INSTALL_EXTRA),
    "pyodbc": SqlServerDriver(
        "pyodbc",
        "pip install pyodbc, and install unixODBC and Microsoft's ODBC Driver 18 for SQL "
        f"Server on the machine; or use mssql+mssqlpython:// after {INSTALL_EXTRA}, which "
        "needs neither",
    ),
}
DEFAULT_DRIVER = "mssqlpython"


def is_sqlserver(engine: sa.Engine) -> bool:
    return engine.dialect.name == "mssql"


def sqlserver_url(url: sa.URL) -> sa.URL:
    """``url`` (an ``mssql`` URL) with its driver named: ``mssql://`` is
    ``mssql+mssqlpython://``. Raises ConfigurationError for a driver queuestream does not
    support (the message names the URL's driver, never its password)."""
    driver = url.get_driver_name() if "+" in url.drivername else DEFAULT_DRIVER
    if driver not in DRIVERS:
        msg = (
            f"SQL Server driver {driver!r} is not supported: use mssql+mssqlpython:// "
            f"({INSTALL_EXTRA}) or mssql+pyodbc://"
        )
        raise ConfigurationError(msg)
    return url.set(drivername=f"mssql+{driver}")


def check_sqlserver_url(url: sa.URL, *, source: bool) -> None:
    """Raise ConfigurationError unless ``url`` may be used: a source, with a supported
    driver (settings check this before anything connects)."""
    if not source:
        msg = (
            "SQL Server is supported as a source only (source_url): a target runs on "
            "sqlite:/// or postgresql://"
        )
        raise ConfigurationError(msg)
    sqlserver_url(url)


def is_sqlserver_url(url: object) -> bool:
    """Is ``url`` (a setting's raw value) a SQL Server URL?"""
    if not isinstance(url, str):
        return False
    try:
        return make_url(url).get_backend_name() == "mssql"
    except (sa.exc.ArgumentError, ValueError):
        return False  # the setting's own validator names the problem


SQLSERVER_ZONE_REQUIRED = (
    "a SQL Server source stamps CreatedDate/ModifiedDate in the server's local time: set "
    "source_timezone to the server's zone, an IANA name such as America/Chicago (UTC only if "
    "the server's clock runs in UTC)"
)


def sqlserver_defaults(data: Any) -> Any:
    """Raw settings ``data`` with SQL Server's defaults: a SQL Server source is Exigo's sync
    database, so unless told otherwise it runs its own ``EXEC queue.Refresh`` (procedure
    mode) rather than queuestream freezing rows itself."""
    if (
        isinstance(data, dict)
        and is_sqlserver_url(data.get("source_url"))
        and data.get("refresh_mode") is None
    ):
        return {**data, "refresh_mode": "procedure"}
    return data


def require_driver(url: sa.URL) -> None:
    """Import the driver of ``url`` (named by :func:`sqlserver_url`), or raise
    ConfigurationError saying what to install."""
    driver = DRIVERS[url.get_driver_name()]
    try:
        importlib.import_module(driver.module)
    except ImportError as exc:
        msg = f"the SQL Server driver {driver.module} cannot be imported ({exc}): {driver.install}"
        raise ConfigurationError(msg) from None


def create_sqlserver_engine(url: sa.URL, *, writer: bool, **kwargs: Any) -> sa.Engine:
    """An engine that reads a SQL Server sync database (never writes: ``writer`` refused)."""
    if writer:
        msg = (
            "queuestream reads a SQL Server sync database and never writes one: the simulator "
            "and the sample targets run on SQLite or PostgreSQL"
        )
        raise ConfigurationError(msg)
    url = sqlserver_url(url)
    require_driver(url)
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def datetime_bound(moment: datetime) -> datetime:
    """``moment`` floored to 10 ms, a time DATETIME holds exactly (3 of its 1/300 s ticks).

    A window bound is sent as DATETIME2 and compared with DATETIME values as the server
    holds them (.00333...), while the driver hands the rows back rounded to the
    millisecond (.003). On a multiple of 10 ms both comparisons agree, so a row falls in
    the window that the overlap filter thinks it does."""
    return moment.replace(microsecond=moment.microsecond // 10_000 * 10_000)


class ContractDecimal(sa.types.TypeDecorator[Decimal]):
    """A contract decimal read from SQL Server: MONEY's four decimals (12.3400) become the
    contract's scale (12.34) when that is exact; any other value is left as read, for the
    encoder to refuse with the table, key and column named."""

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.quantum = Decimal(1).scaleb(-scale)
        self.scale = scale

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if type(value) is not Decimal or not value.is_finite():
            return value
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int) or exponent >= -self.scale:
            return value
        try:
            exact = value.quantize(self.quantum)
        except InvalidOperation:  # more digits than a Decimal context holds: refused later
            return value
        return exact if exact == value else value


def contract_decimal(precision: int, scale: int) -> sa.Numeric[Decimal]:
    """``Numeric(precision, scale)``, read through :class:`ContractDecimal` on SQL Server
    only (other databases return the column's own scale)."""
    return sa.Numeric(precision, scale).with_variant(ContractDecimal(precision, scale), "mssql")


#: The SQL Server types each kind of contract column accepts (reflected types).
_ACCEPTED: tuple[tuple[type[sa.types.TypeEngine[Any]], tuple[type[Any], ...], str], ...] = (
    (
        sa.DateTime,
        (mssql.DATETIME, mssql.DATETIME2, mssql.SMALLDATETIME, sa.DATETIME),
        "DATETIME, DATETIME2 or SMALLDATETIME in local time",
    ),
    (
        sa.Numeric,
        (mssql.MONEY, mssql.SMALLMONEY, sa.DECIMAL, sa.NUMERIC),
        "MONEY, SMALLMONEY, DECIMAL or NUMERIC (exact amounts)",
    ),
    (
        sa.Integer,
        (sa.INTEGER, sa.SMALLINT, mssql.TINYINT, mssql.BIT),
        "INT, SMALLINT, TINYINT or BIT (the contract's int has 32 bits)",
    ),
    (
        sa.String,
        (sa.NVARCHAR, sa.VARCHAR, sa.NCHAR, sa.CHAR, mssql.NTEXT, sa.TEXT),
        "NVARCHAR, NCHAR, VARCHAR, CHAR, NTEXT or TEXT",
    ),
)


def column_type_problem(contract: sa.types.TypeEngine[Any], found: Any) -> str | None:
    """Why a SQL Server column of reflected type ``found`` cannot fill a contract column of
    type ``contract`` (None: it can). Decided on the reflected type: DATETIMEOFFSET, FLOAT
    for an amount, a string for a number and the like are refused before any row is read."""
    for kind, accepted, wanted in _ACCEPTED:
        if isinstance(contract, kind):
            if isinstance(found, accepted) and not isinstance(found, mssql.DATETIMEOFFSET):
                return None
            return f"it is {_render(found)}; the contract needs {wanted}"
    return None


def _render(found: Any) -> str:
    try:
        return str(found.compile(dialect=mssql.dialect()))  # type: ignore[no-untyped-call]
    except (AttributeError, sa.exc.CompileError):
        return repr(found)
