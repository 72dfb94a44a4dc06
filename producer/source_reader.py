"""Reading the sync database: a safe upper bound, then a frozen snapshot of changed rows.

Two modes (``refresh_mode``):

* ``watermark``: queuestream freezes the snapshot itself. The changed rows of all
  six tables are read in one REPEATABLE READ transaction (on SQLite, one read
  transaction in WAL mode): the snapshot cannot change while it is read. It is
  taken once Kafka has answered and released when the last row is read, before
  the Kafka commit, so that no wait for the broker holds it open.
* ``procedure``: the source has its own refresh (Exigo's ``EXEC queue.Refresh``)
  that fills ``queue.*`` tables; queuestream runs the configured statement and
  reads those tables as they are.

Where SQL Server differs (its snapshot isolation, its safe bound, its checks, key
order without row values) :mod:`producer.sqlserver_source` says how; how a row is
held, :mod:`producer.changed_rows`; how PostgreSQL's are read without SQLAlchemy's
Row between, :mod:`producer.postgres_rows`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from producer import postgres_rows, sqlite_rows
from producer.changed_rows import ChangedRow, check_columns, row_layout
from producer.overlap_versions import OverlapMatch, TableVersions, match_overlap
from producer.sqlserver_source import (
    SNAPSHOT,
    SqlServerBound,
    check_sqlserver_source,
    column_problem,
    key_after,
    run_procedure,
)
from producer.state_changelog import state_key_of
from queuestream.databases import (
    describe_url,
    is_postgres,
    retriable_outages,
    setting_where_known,
)
from queuestream.errors import ConfigurationError, RetriableError, SourceSchemaError
from queuestream.key_sets import KEYS, among, key_chunks
from queuestream.settings import Settings
from queuestream.sqlserver import is_sqlserver
from queuestream.sync_schema import Base, to_source_local
from queuestream.tables import TABLES, TableSpec

__all__ = ["FrozenSnapshot", "SourceReader"]

log = logging.getLogger(__name__)

_FETCH = 5000


_IN_FLIGHT_SQL = sa.text(
    """
    SELECT clock_timestamp() AS now,
           least(
             (SELECT min(xact_start) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND backend_type NOT IN ('autovacuum worker', 'walsender')
                 AND xact_start IS NOT NULL),
             (SELECT min(prepared) FROM pg_prepared_xacts
               WHERE database = current_database())
           ) AS oldest,
           (SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend' AND state IS NULL) AS hidden
    """
)


def _check_table(
    inspector: sa.Inspector,
    schema: str | None,
    table: sa.Table,
    engine: sa.Engine,
    mode: str,
) -> None:
    where = describe_url(engine.url)
    name = table.name if schema is None else f"{schema}.{table.name}"
    if not inspector.has_table(table.name, schema=schema):
        hint = (
            "procedure mode reads the queue tables that the source's refresh procedure fills"
            if schema is not None
            else "point --source (QUEUESTREAM_SOURCE_URL) at the sync database, or run "
            "'queuestream sim' to create a simulated one"
        )
        msg = f"the sync database {where} has no table {name} ({mode} mode reads it): {hint}"
        raise SourceSchemaError(msg)
    reflected = {c["name"]: c["type"] for c in inspector.get_columns(table.name, schema=schema)}
    present = set(reflected)
    folded = {c.lower(): c for c in present}
    for column in table.columns:
        if column.name in present:
            if is_sqlserver(engine):
                problem = column_problem(name, column.name, column.type, reflected[column.name])
                if problem is not None:
                    raise problem
            continue
        near = folded.get(column.name.lower())
        also = f" (it has {near!r}: names must match exactly)" if near else ""
        msg = (
            f"table {name} of the sync database {where} has no column {column.name}{also}; "
            "queuestream reads the Exigo sync schema's columns (see queuestream/sync_schema.py)"
        )
        raise SourceSchemaError(msg)


class SourceReader:
    """Access to the sync database for one producer.

    Every access runs in :func:`~queuestream.databases.retriable_outages`: the source
    going away leaves as DatabaseUnavailableError, which the produce loop waits out,
    never as a raw driver error.
    """

    def __init__(self, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.zone = settings.zone
        self._warned_hidden = False
        self._sqlserver = SqlServerBound(engine, settings) if is_sqlserver(engine) else None

    def check_schema(self) -> None:
        """Stop with one line naming the first table or column the refresh needs but the
        source lacks. queuestream never creates or alters anything in the sync database
        (only ``queuestream sim`` builds a simulated one)."""
        with retriable_outages(self.engine):
            inspector = sa.inspect(self.engine)
            needed: list[tuple[str | None, sa.Table]] = [
                (None, Base.metadata.tables[spec.source]) for spec in TABLES
            ]
            if self.settings.refresh_mode == "procedure":
                queue = self.settings.queue_schema
                needed += [(queue, Base.metadata.tables[spec.source]) for spec in TABLES]
            for schema, table in needed:
                _check_table(inspector, schema, table, self.engine, self.settings.refresh_mode)
        if self._sqlserver is not None:
            check_sqlserver_source(self.engine, self.settings)

    def safe_end(self) -> datetime:
        """A bound before which every change is already visible (aware, UTC).

        Computed *before* the snapshot is taken, so that no transaction in flight
        now can commit a row stamped below it that the snapshot misses.
        """
        if self._sqlserver is not None:
            return self._sqlserver.safe_end()
        if is_postgres(self.engine):
            with (
                retriable_outages(self.engine),
                self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
            ):
                now, oldest, hidden = conn.execute(_IN_FLIGHT_SQL).one()
            if hidden and not self._warned_hidden:
                self._warned_hidden = True
                log.warning(
                    "%d sessions of other users are hidden from pg_stat_activity; their "
                    "transactions cannot bound the watermark, so it stays settle_seconds behind "
                    "(GRANT pg_read_all_stats to this user to fix)",
                    hidden,
                )
            bound = now if oldest is None else min(now, oldest)
            bound -= timedelta(seconds=self.settings.pg_clock_allowance_seconds)
            if hidden:
                bound = min(bound, now - timedelta(seconds=self.settings.settle_seconds))
            return cast("datetime", bound).astimezone(UTC)
        return datetime.now(UTC) - timedelta(seconds=self.settings.settle_seconds)

    @contextmanager
    def frozen(self) -> Iterator[FrozenSnapshot]:
        """An open read transaction whose view of the data does not change.

        Hold it no longer than reading takes: on PostgreSQL an open REPEATABLE READ
        transaction holds back vacuum on the whole source database. The refresh takes it
        only once Kafka has answered and leaves it before waiting for Kafka.
        """
        with retriable_outages(self.engine), self.engine.connect() as conn:
            snapshot_conn = conn
            if is_postgres(self.engine):
                snapshot_conn = conn.execution_options(isolation_level="REPEATABLE READ")
            elif self._sqlserver is not None and self.settings.refresh_mode == "watermark":
                snapshot_conn = conn.execution_options(isolation_level=SNAPSHOT)
            with snapshot_conn.begin():
                if is_postgres(self.engine):
                    snapshot_conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    _without_jit(snapshot_conn)
                yield FrozenSnapshot(snapshot_conn, self.settings)

    def run_refresh_statement(self, since: datetime | None) -> None:
        """Procedure mode: run the source's own refresh and commit it."""
        if since is None:
            statement, params = self.settings.refresh_statement, {}
        else:
            statement = self.settings.refresh_since_statement
            params = {"since": to_source_local(since, self.zone)}
        log.info("running the source's refresh: %s %s", statement, params or "")
        try:
            with retriable_outages(self.engine), self.engine.begin() as conn:
                if self._sqlserver is not None:
                    run_procedure(conn, statement, params)
                else:
                    conn.execute(sa.text(statement), params)
        except sa.exc.DBAPIError as exc:  # not an outage: the source rejects the statement
            msg = f"the refresh statement {statement!r} failed: {exc.orig}; check refresh_statement"
            raise ConfigurationError(msg) from None


#: For the snapshot's transaction only; skipped on a server without the setting.
_NO_JIT = setting_where_known("jit", "off", local=True)


def _without_jit(conn: sa.Connection) -> None:
    """No JIT compiling for the snapshot's queries, where the server has the setting
    (PostgreSQL 11 on; it ends with the transaction). A large window's query of an
    order's lines is costed high enough (a lookup of its order for each line) that
    PostgreSQL compiles it: 90 to 140 ms before its first row, for a scan that then runs
    no faster (200,000 rows: 250-430 ms with JIT, 145-250 ms without)."""
    conn.exec_driver_sql(_NO_JIT)


@functools.cache
def _queue_tables(schema: str) -> dict[str, sa.Table]:
    """Procedure mode's ``<schema>.<Table>`` tables, built once per schema (a snapshot is
    taken for every refresh and every sweep step)."""
    queue_md = sa.MetaData(schema=schema)
    return {spec.name: Base.metadata.tables[spec.source].to_metadata(queue_md) for spec in TABLES}


class FrozenSnapshot:
    """Rows of one refresh, read inside one snapshot transaction."""

    def __init__(self, conn: sa.Connection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings
        self.zone = settings.zone
        self._queue_tables = _queue_tables(settings.queue_schema)
        self._psycopg = conn.dialect.driver == "psycopg"
        self._sqlite = conn.dialect.name == "sqlite"

    def _base(self, spec: TableSpec) -> sa.Table:
        return Base.metadata.tables[spec.source]

    def _select(self, spec: TableSpec, table: sa.Table) -> sa.Select[Any]:
        """The rows of ``table`` with their CustomerID last (``__customer_id``), in
        ModifiedDate, key order. An order's lines take theirs from the order, looked up
        by its key for each line (a line whose order is gone has none): a join would read
        less for a refresh of every line, but a planner that misjudges a small window
        could read all of a large Orders table for it, every refresh."""
        customer: sa.ColumnElement[Any]
        if spec.partition_via_order:
            orders = Base.metadata.tables["Orders"]
            customer = (
                sa.select(orders.c.CustomerID)
                .where(orders.c.OrderID == table.c.OrderID)
                .scalar_subquery()
            )
        else:
            customer = table.c[spec.customer_column or "CustomerID"]
        return sa.select(*table.c, customer.label("__customer_id")).order_by(
            table.c.ModifiedDate, *(table.c[k] for k in spec.key)
        )

    def _stream(self, spec: TableSpec, query: sa.Select[Any]) -> Iterator[ChangedRow]:
        with retriable_outages(self.conn.engine):
            yield from self._rows(spec, query)

    def _rows(self, spec: TableSpec, query: sa.Select[Any]) -> Iterator[ChangedRow]:
        """The rows of ``query`` (a :meth:`_select` of ``spec``'s table)."""
        layout = row_layout(spec)
        if self._psycopg:
            cursor = postgres_rows.open_cursor(self.conn, query, _FETCH)
            if cursor is not None:
                yield from postgres_rows.read(self.conn, cursor, layout)
                return
        if self._sqlite:
            yield from sqlite_rows.read(self.conn, query, layout, _FETCH)
            return
        result = self.conn.execution_options(yield_per=_FETCH).execute(query)
        check_columns(list(result.keys()), layout)
        # A chunk at a time (partitions): far fewer calls per row than iterating rows.
        for chunk in result.partitions():
            for values in chunk:
                customer = values[-1]
                if customer is None:
                    customer = 0  # an order line whose order is gone: CustomerID 0's partition
                yield ChangedRow(values, int(customer), layout)

    def changed_rows(
        self, spec: TableSpec, read_from: datetime, end: datetime
    ) -> Iterator[ChangedRow]:
        """Watermark mode: rows of ``spec`` with read_from <= ModifiedDate < end."""
        table = self._base(spec)
        query = self._select(spec, table).where(
            table.c.ModifiedDate >= to_source_local(read_from, self.zone),
            table.c.ModifiedDate < to_source_local(end, self.zone),
        )
        return self._stream(spec, query)

    def versions(
        self, spec: TableSpec, read_from: datetime, end: datetime
    ) -> Iterator[tuple[tuple[Any, ...], datetime]]:
        """The keys and ModifiedDate (as read) of :meth:`changed_rows`' rows, in its order."""
        table = self._base(spec)
        keys = [table.c[k] for k in spec.key]
        query = (
            sa.select(*keys, table.c.ModifiedDate)
            .where(
                table.c.ModifiedDate >= to_source_local(read_from, self.zone),
                table.c.ModifiedDate < to_source_local(end, self.zone),
            )
            .order_by(table.c.ModifiedDate, *keys)
        )
        with retriable_outages(self.conn.engine):
            if self._psycopg:
                cursor = postgres_rows.open_cursor(self.conn, query, _FETCH)
                if cursor is not None:
                    for values in postgres_rows.read_tuples(self.conn, cursor):
                        yield values[:-1], values[-1]
                    return
            result = self.conn.execution_options(yield_per=_FETCH).execute(query)
            for chunk in result.partitions():
                for values in chunk:
                    yield tuple(values[:-1]), values[-1]

    @property
    def matches_overlaps(self) -> bool:
        """Can the server decide an overlap at once (:meth:`overlap_matches`; PostgreSQL)?"""
        return self._psycopg

    def overlap_matches(
        self,
        spec: TableSpec,
        read_from: datetime,
        start: datetime,
        before: TableVersions,
        start_us: int,
        keep_us: int,
    ) -> OverlapMatch | None:
        """PostgreSQL's answer for the overlap ``read_from <= ModifiedDate < start``: which
        of its rows are ``before``'s versions (:func:`~producer.overlap_versions.match_overlap`);
        None from any other database, whose overlap is read row by row."""
        if not self._psycopg:
            return None
        low, high = (to_source_local(m, self.zone) for m in (read_from, start))
        with retriable_outages(self.conn.engine):
            return match_overlap(
                self.conn, self._base(spec), spec.key, low, high, before, start_us, keep_us
            )

    def queue_rows(self, spec: TableSpec) -> Iterator[ChangedRow]:
        """Procedure mode: every row of ``queue.<Table>``."""
        return self._stream(spec, self._select(spec, self._queue_tables[spec.name]))

    def keys_under(self, spec: TableSpec, parents: set[int]) -> set[tuple[int, int]]:
        """The keys of ``spec``'s rows whose first key column is one of ``parents`` (an
        order's lines), as the state keys them; read from the sync table in this snapshot.
        A key that is no integer (text in a SQLite key column) is left out: the state holds
        none such, and the refresh refuses its row by name."""
        table = self._base(spec)
        columns = [table.c[k] for k in spec.key]
        query = sa.select(*columns).where(among(columns[0], self.conn.dialect.name, probe=True))
        found: set[tuple[int, int]] = set()
        with retriable_outages(self.conn.engine):
            for chunk in key_chunks(self.conn, parents):
                for values in self.conn.execute(query, {KEYS: chunk}):
                    key = state_key_of(*values)
                    if key is not None:
                        found.add(key)
        return found

    def rows_after(
        self, spec: TableSpec, after: tuple[int, int] | None, limit: int
    ) -> list[ChangedRow]:
        """Up to ``limit`` rows of ``spec`` with a key after ``after``, in key order (the
        sweep's walk through the sync table)."""
        table = self._base(spec)
        columns = [table.c[k] for k in spec.key]
        query = self._select(spec, table).order_by(None).order_by(*columns).limit(limit)
        if after is not None:
            if len(columns) == 1:
                query = query.where(columns[0] > after[0])
            elif self.conn.dialect.name == "mssql":  # T-SQL has no row-value comparison
                query = query.where(key_after(columns, after))
            else:
                query = query.where(sa.tuple_(*columns) > sa.tuple_(*after))
        with retriable_outages(self.conn.engine):
            return list(self._rows(spec, query))

    def check_fingerprint(self, fingerprint: str) -> None:
        """Procedure mode: raise RetriableError unless the queue tables are still the ones
        ``fingerprint`` describes (the END marker carries it: the rows published must be
        the ones it names)."""
        again, _ = self.queue_fingerprint()
        if again != fingerprint:
            msg = (
                "the queue tables changed between their fingerprint and publishing "
                "(does another process run the refresh statement?); nothing was "
                "committed, the refresh starts over"
            )
            raise RetriableError(msg)

    def queue_fingerprint(self) -> tuple[str, int]:
        """Digest and row count of the queue tables' keys and versions."""
        digest = hashlib.sha256()
        count = 0
        for spec in TABLES:
            table = self._queue_tables[spec.name]
            query = sa.select(*(table.c[k] for k in spec.key), table.c.ModifiedDate).order_by(
                *(table.c[k] for k in spec.key)
            )
            try:
                with retriable_outages(self.conn.engine):
                    rows = self.conn.execute(query).all()
            except sa.exc.ProgrammingError as exc:
                msg = (
                    f"cannot read {table.fullname}: {exc.orig}; procedure mode needs the "
                    f"source's queue tables in schema {self.settings.queue_schema!r}"
                )
                raise ConfigurationError(msg) from None
            for row in rows:
                digest.update(f"{spec.name}|{tuple(row)!r}\n".encode())
                count += 1
        return digest.hexdigest(), count
