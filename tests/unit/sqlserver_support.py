"""What the SQL Server unit tests share: the URL, the two drivers' dialects, and values in the
shapes the driver returns them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.mssql.mssqlpython import MSDialect_mssqlpython
from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc

__all__ = ["CHICAGO", "DIALECTS", "URL", "local", "reflected_type", "without_module"]

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


class _Absent(MetaPathFinder):
    """Finds ``name`` nowhere: its import fails as it does where it is not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == self.name or fullname.startswith(f"{self.name}."):
            msg = f"No module named {fullname!r}"
            raise ModuleNotFoundError(msg, name=fullname)
        return None


def without_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``name`` (a driver the test venv has installed) impossible to import for one test,
    as on a machine without it."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(sys, "meta_path", [_Absent(name), *sys.meta_path])
