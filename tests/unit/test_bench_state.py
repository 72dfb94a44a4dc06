"""``make bench-state``'s writes: the refresh it makes, and one pass of it on a small state."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.state import _fill, _keys, main, write_phase
from producer.published_state import PublishedState


def test_a_refresh_into_a_full_state_replaces_the_share_asked_and_adds_the_rest() -> None:
    keys = _keys(1000, 400, 0.25, seed=3)
    assert len(keys) == len(set(keys)) == 400
    assert sum(k < 1000 for k in keys) == 100  # a quarter replace rows the state holds
    assert sorted(k for k in keys if k >= 1000) == list(range(1000, 1300))
    assert keys != sorted(keys)  # in no key order, as a refresh's rows arrive
    assert keys == _keys(1000, 400, 0.25, seed=3)
    assert _keys(0, 5, 0.5, seed=3) == [0, 1, 2, 3, 4]  # the empty state: appended


def test_one_pass_writes_every_row_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _fill(path, 300, b"x" * 20, lambda _line: None)
    found = write_phase(str(path), 300, 200, 0.5, 7, b"y" * 20)
    assert found["writes"] == 200
    assert found["updates"] == 100
    assert found["cpu_seconds"] > 0
    assert found["peak_rss_mb"] > 0
    state = PublishedState(path)
    try:
        held = dict(state.between("order_details", None, None))
    finally:
        state.close()
    assert len(held) == 300 + 100  # 100 replaced, 100 new
    assert sum(p.version == 2 for p in held.values()) == 200


def test_a_share_of_updates_past_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--updates", "1.5", "--json"]) == 1
    assert "--updates must be between 0 and 1" in capsys.readouterr().err
