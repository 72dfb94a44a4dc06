"""Reading a server-side cursor in chunks (producer.postgres_rows): every row, in order,
and no FETCH sent past one that came back short (each is a round trip to the server)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from producer.postgres_rows import read_tuples


class _Cursor:
    """psycopg's server-side cursor as read_tuples uses it: fetchmany and close."""

    def __init__(self, rows: int) -> None:
        self.rows = [(n,) for n in range(rows)]
        self.fetches = 0
        self.closed = False

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        assert not self.closed
        self.fetches += 1
        chunk, self.rows = self.rows[:size], self.rows[size:]
        return chunk

    def close(self) -> None:
        self.closed = True


_CONN: Any = SimpleNamespace(dialect=SimpleNamespace(loaded_dbapi=SimpleNamespace(Error=OSError)))


@pytest.mark.parametrize(
    ("rows", "fetches"), [(0, 1), (3, 1), (4, 2), (5, 2), (8, 3), (9, 3), (12, 4)]
)
def test_every_row_is_read_and_no_fetch_follows_a_short_one(rows: int, fetches: int) -> None:
    cursor = _Cursor(rows)
    assert list(read_tuples(_CONN, cursor, 4)) == [(n,) for n in range(rows)]
    assert cursor.fetches == fetches
    assert cursor.closed
