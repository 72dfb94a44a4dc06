"""The replacement of customer balances on PostgreSQL, against a stand-in connection.

tests/integration/test_balance_conflicts.py makes two real members collide; here the
limits around it: another table's key refused is the data's fault (raised as it is),
and balances taken again and again give up to a retry of the whole batch.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from consumers.accounting import balances
from consumers.accounting.schema import CUSTOMER_BALANCES
from queuestream.errors import RetriableError


class _Savepoint:
    """``with connection.begin_nested()``: released, or rolled back by an exception."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __enter__(self) -> _Savepoint:
        self.log.append("savepoint")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.log.append("release" if kind is None else "rollback")


class _Connection:
    """Executes by raising ``refusals`` (one per INSERT) until they run out."""

    def __init__(self, refusals: list[Exception]) -> None:
        self.refusals = refusals
        self.log: list[str] = []

    def begin_nested(self) -> _Savepoint:
        return _Savepoint(self.log)

    def execute(self, statement: Any, _params: Any) -> Any:
        self.log.append(type(statement).__name__)
        if isinstance(statement, sa.Insert) and self.refusals:
            raise self.refusals.pop(0)
        return SimpleNamespace(all=list)


class _UniqueViolation(psycopg.errors.UniqueViolation):
    """psycopg's error with the table its diagnostics name (set by the server)."""

    def __init__(self, table: str) -> None:
        super().__init__("duplicate key value violates unique constraint")
        self.table = table

    @property
    def diag(self) -> Any:
        return SimpleNamespace(table_name=self.table)


def _taken(table: str) -> sa.exc.IntegrityError:
    orig = _UniqueViolation(table)
    error = sa.exc.DBAPIError.instance("INSERT", None, orig, psycopg.Error)
    assert isinstance(error, sa.exc.IntegrityError)
    return error


def _replace(conn: _Connection) -> None:
    replace = sa.insert(CUSTOMER_BALANCES)  # the one statement after the lock
    balances._replace_concurrently(conn, replace, [1])  # type: ignore[arg-type]


def test_a_balance_taken_once_is_replaced_again() -> None:
    conn = _Connection([_taken("customer_balances")])
    _replace(conn)
    assert conn.log == [
        "savepoint", "Select", "Insert", "rollback",  # the lock, then the rows
        "savepoint", "Select", "Insert", "release",
    ]  # fmt: skip


def test_another_tables_key_is_the_datas_fault() -> None:
    refused = _taken("invoices")
    with pytest.raises(sa.exc.IntegrityError) as raised:
        _replace(_Connection([refused]))
    assert raised.value is refused


def test_balances_taken_at_every_attempt_roll_the_batch_back_to_be_applied_again() -> None:
    attempts = balances._REPLACE_ATTEMPTS
    conn = _Connection([_taken("customer_balances") for _ in range(attempts)])
    with pytest.raises(RetriableError, match="rolled back and applied again"):
        _replace(conn)
    assert conn.log.count("Insert") == attempts
    assert "release" not in conn.log
