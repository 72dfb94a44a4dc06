"""``make bench-freshness``'s options: a history for the accounting target is asked for."""

from __future__ import annotations

import pytest

from bench.freshness import parse_args


def test_no_history_unless_asked() -> None:
    assert parse_args([]).history == 0
    assert parse_args(["--history", "40"]).history == 40


def test_a_negative_history_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--history", "-1"])
    assert "--history: 0 or more" in capsys.readouterr().err
