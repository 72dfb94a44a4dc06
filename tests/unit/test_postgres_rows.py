"""Reading a declared cursor in chunks (producer.postgres_rows): every row, in order,
and no FETCH sent past one that came back short (each is a round trip to the server)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from producer.postgres_rows import DeclaredCursor, read_tuples


class _Cursor:
    """A psycopg cursor as DeclaredCursor uses it: FETCH statements, then fetchall."""

    def __init__(self, rows: int) -> None:
        self.rows = [(n,) for n in range(rows)]
        self.sent: list[str] = []
        self.last: list[tuple[Any, ...]] = []

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        chunk, self.rows = self.rows[:size], self.rows[size:]
        return chunk

    def execute(self, statement: str, *, prepare: bool) -> None:
        assert not prepare
        self.sent.append(statement)
        size = int(statement.split()[2])  # FETCH FORWARD <size> FROM <name>
        self.last = self.fetch(size)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.last


_CONN: Any = SimpleNamespace(dialect=SimpleNamespace(loaded_dbapi=SimpleNamespace(Error=OSError)))


@pytest.mark.parametrize(
    ("rows", "fetches"), [(0, 1), (3, 1), (4, 2), (5, 2), (8, 3), (9, 3), (12, 4)]
)
def test_every_row_is_read_and_no_fetch_follows_a_short_one(rows: int, fetches: int) -> None:
    cursor = _Cursor(rows)
    declared = DeclaredCursor(cursor, "rows_1", 4, cursor.fetch(4))  # the first, with DECLARE
    assert list(read_tuples(_CONN, declared)) == [(n,) for n in range(rows)]
    assert 1 + len(cursor.sent) == fetches
    assert set(cursor.sent) <= {"FETCH FORWARD 4 FROM rows_1"}
