"""``replay --target --execute``: a target whose offsets cannot be moved, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers import offsets
from consumers.replay import OffsetMove, ReplayPlan
from queuestream.databases import create_engine
from queuestream.errors import DatabaseAccessError


def _plan(url: str) -> ReplayPlan:
    move = OffsetMove("exigo.customers", 0, 5, 5, 0, 0, 9)
    return ReplayPlan("g", "to the earliest offsets", "Empty", [], [move], url, ["accounting"])


def test_a_target_that_refuses_the_write_is_a_mistake_to_fix_not_an_outage(
    tmp_path: Path,
) -> None:
    """A target the plan could read but whose offsets cannot be written for good (here a
    read-only database; a refused password or a user without INSERT likewise) was
    reported as a DatabaseUnavailableError, "once the target is back"."""
    from consumers.replay import _move_target

    file = tmp_path / "accounting.db"
    engine = create_engine(f"sqlite:///{file}", writer=True)
    with engine.begin() as conn:
        offsets.create(conn)
    engine.dispose()
    with pytest.raises(DatabaseAccessError) as raised:
        _move_target(_plan(f"sqlite:///file:{file}?mode=ro&uri=true"))
    message = str(raised.value)
    assert "cannot move the offsets stored in the target" in message
    assert "read-only" in message
    assert "exigo.customers,0,0" in message  # what to replay with once it is fixed
