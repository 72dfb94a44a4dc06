"""The offsets kept in the target (consumers.offsets.OffsetStore), on SQLite.

PostgreSQL runs the same statements in every integration test that consumes.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from consumers import offsets
from consumers.offsets import OffsetStore


def _rows(engine: sa.Engine) -> dict[tuple[str, int], tuple[int, str]]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(
                offsets.OFFSETS.c.topic,
                offsets.OFFSETS.c.partition,
                offsets.OFFSETS.c.next_offset,
                offsets.OFFSETS.c.consumer_group,
            )
        )
        return {(t, p): (o, g) for t, p, o, g in found}


def test_save_moves_only_the_offsets_that_go_forward_in_one_statement() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        offsets.create(conn)
    first, second = OffsetStore("accounting", "one"), OffsetStore("accounting", "two")
    parts = [("exigo.orders", p) for p in range(4)]
    with engine.begin() as conn:
        before = first.lock(conn, parts)
        first.save(conn, dict.fromkeys(parts, 10), before)
    statements: list[tuple[str, int]] = []

    def seen(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if statement.startswith("UPDATE"):
            statements.append((statement, len(params) if many else 1))

    sa.event.listen(engine, "before_cursor_execute", seen)
    with engine.begin() as conn:
        before = second.lock(conn, parts)
        assert before == dict.fromkeys(parts, 10)
        moved = {parts[0]: 12, parts[1]: 10, parts[2]: 7, parts[3]: 30}
        second.save(conn, moved, before)
    assert [n for _, n in statements] == [2]  # two moved forward: one statement
    assert _rows(engine) == {
        parts[0]: (12, "two"),
        parts[1]: (10, "one"),  # not forward: left as the first group stored it
        parts[2]: (10, "one"),  # backward: never
        parts[3]: (30, "two"),
    }
    with engine.begin() as conn:
        second.save(conn, {parts[0]: 12}, second.lock(conn, parts))
    assert len(statements) == 1  # nothing moved: no statement
