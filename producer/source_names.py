"""The names an event's ``source`` block gives its database and schema.

Debezium's readers name things after them: Debezium's JDBC sink, for one, can name a
target table ``${source.schema}_${source.table}`` (and fails on a null schema), and
``source.db`` is shown as a database name. So both are names, never a path and never
null:

- ``source.db``: the database of the source URL; for SQLite the file's stem
  (``var/exigo-sync.db`` -> ``exigo-sync``), ``memory`` for an in-memory database.
- ``source.schema``: the schema of the sync tables the rows are of: the connection's
  default schema, as the database reports it when the engine connects (PostgreSQL's
  ``current_schema()``, usually ``public``; SQL Server's ``SCHEMA_NAME()``, usually
  ``dbo``; SQLite's ``main``), or that usual name when the dialect reports none. The
  same in procedure mode, whose ``queue.*`` tables hold images of those rows: a change to
  Orders names ``dbo.Orders`` either way, so a sink naming tables
  ``${source.schema}_${source.table}`` keeps its tables when the mode changes.
"""

from __future__ import annotations

from pathlib import PurePath

import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = ["source_database", "source_schema"]

#: A dialect's usual default schema, when the connection does not report one.
_DEFAULT_SCHEMAS = {"sqlite": "main", "postgresql": "public", "mssql": "dbo"}


def source_database(source_url: str) -> str:
    """``source.db`` for ``source_url``: the database's name, never a file path."""
    url = make_url(source_url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite":
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            return "memory"
        return PurePath(database.removeprefix("file:").partition("?")[0]).stem
    return database or str(url.query.get("database", "")) or url.get_backend_name()


def source_schema(engine: sa.Engine) -> str:
    """``source.schema``: the schema of the sync tables ``engine`` reads.

    ``engine`` must have connected once (the producer checks the source's tables first), so
    that its dialect knows the connection's default schema.
    """
    reported = engine.dialect.default_schema_name
    if reported:
        return str(reported)
    return _DEFAULT_SCHEMAS.get(engine.dialect.name, "default")
