"""An Exigo-like ``queue.refresh`` procedure for PostgreSQL sync databases.

Exigo's sync database ships ``EXEC queue.Refresh``; this installs the same
behaviour on PostgreSQL so that procedure mode can be run and tested: each call
replaces ``queue.<Table>`` with the rows changed since the previous call (the
first call takes the last 24 hours), and ``CALL queue.refresh(since)``
overrides the start once. Use with
``refresh_statement = "CALL queue.refresh()"`` and
``refresh_since_statement = "CALL queue.refresh(:since)"``.
"""

from __future__ import annotations

import sqlalchemy as sa

from queuestream.databases import is_postgres
from queuestream.errors import ConfigurationError
from queuestream.tables import TABLES

__all__ = ["PROCEDURE_SINCE_STATEMENT", "PROCEDURE_STATEMENT", "install_queue_procedure"]

PROCEDURE_STATEMENT = "CALL {schema}.refresh()"
PROCEDURE_SINCE_STATEMENT = "CALL {schema}.refresh(:since)"


def install_queue_procedure(engine: sa.Engine, schema: str = "queue") -> None:
    if not is_postgres(engine):
        msg = "the queue procedure can be installed on PostgreSQL only"
        raise ConfigurationError(msg)
    copies = "\n".join(
        f"""
        DROP TABLE IF EXISTS {schema}."{t.source}";
        CREATE TABLE {schema}."{t.source}" AS
          SELECT * FROM public."{t.source}"
           WHERE "ModifiedDate" >= v_from AND "ModifiedDate" < v_to;"""
        for t in TABLES
    )
    body = f"""
    CREATE OR REPLACE PROCEDURE {schema}.refresh(since timestamp DEFAULT NULL)
    LANGUAGE plpgsql AS $$
    DECLARE
      v_from timestamp;
      v_to timestamp := localtimestamp;
    BEGIN
      SELECT last_refresh INTO v_from FROM {schema}.refresh_state;
      IF since IS NOT NULL THEN
        v_from := since;
      ELSIF v_from IS NULL THEN
        v_from := v_to - interval '24 hours';
      END IF;
      {copies}
      DELETE FROM {schema}.refresh_state;
      INSERT INTO {schema}.refresh_state VALUES (v_to);
    END $$;
    """
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {schema}.refresh_state (last_refresh timestamp)"
        )
        conn.exec_driver_sql(body)
        # Exigo's queue tables always exist; empty until the first refresh fills them.
        for t in TABLES:
            conn.exec_driver_sql(
                f'CREATE TABLE IF NOT EXISTS {schema}."{t.source}" AS '
                f'SELECT * FROM public."{t.source}" WITH NO DATA'
            )
