"""``replay --target --execute``: a target whose offsets cannot be moved, and why."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from consumers import offsets
from consumers.replay import OffsetMove, ReplayPlan
from queuestream.databases import create_engine
from queuestream.errors import DatabaseAccessError, QueuestreamError
from queuestream.settings import load_settings


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


def test_with_force_a_target_that_fails_after_the_group_moved_says_the_group_moved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--force`` moves the group's offsets in Kafka first; a target that then fails
    must not be reported with its "nothing was committed" alone."""
    import consumers.replay

    moved: list[str] = []
    described = types.SimpleNamespace(state="Stable", members=["m1"])
    monkeypatch.setattr(consumers.replay, "admin_client", lambda _settings: object())
    monkeypatch.setattr(consumers.replay, "describe_groups", lambda _a, gs: {gs[0]: described})
    monkeypatch.setattr(
        consumers.replay, "_alter_group", lambda _a, plan, _m: moved.append(plan.group)
    )
    missing = tmp_path / "no-such-folder" / "accounting.db"
    with pytest.raises(QueuestreamError) as raised:
        consumers.replay.execute_replay(
            load_settings(), _plan(f"sqlite:///file:{missing}?mode=ro&uri=true"), force=True
        )
    assert moved == ["g"]
    assert "the group's offsets in Kafka did move" in str(raised.value)
