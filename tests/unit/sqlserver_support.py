"""What the SQL Server unit tests share: the URL, the two drivers' dialects, and values in the
shapes the driver returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.mssql.mssqlpython import MSDialect_mssqlpython
from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc

__all__ = ["CHICAGO", "DIALECTS", "URL", "local", "reflected_type"]

CHICAGO = ZoneInfo("America/Chicago")
URL = "mssql://sync:s3cret@db.internal:1433/exigo"


#: The dialects of the two drivers, with the parameter style each has with its driver loaded.
DIALECTS: dict[str, sa.Dialect] = {
    "mssqlpython": MSDialect_mssqlpython(paramstyle="pyformat"),  # type: ignore[no-untyped-call]
    "pyodbc": MSDialect_pyodbc(paramstyle="qmark"),  # type: ignore[no-untyped-call]
}


def local(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """A SQL Server DATETIME as the driver gives it: naive, in the server's local time."""
    return datetime(year, month, day, hour, minute, second, us)  # noqa: DTZ001


def reflected_type(kind: Any, *args: Any) -> Any:
    """A reflected SQL Server type (some of the dialect's constructors are untyped)."""
    return kind(*args)
