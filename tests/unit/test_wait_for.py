"""tests.helpers.wait_for: returns the first truthy value or fails with the message."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for


def test_returns_first_truthy_value() -> None:
    values = iter([0, None, "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.01, message="ready") == "ready"


def test_times_out_with_message() -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, timeout=0.2, interval=0.05, message="the impossible")


def test_ignored_exceptions_count_as_not_yet() -> None:
    calls = {"n": 0}

    def flaky() -> bool:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError
        return True

    assert wait_for(flaky, timeout=5, interval=0.01, ignore=(ConnectionError,)) is True


def test_other_exceptions_propagate() -> None:
    def broken() -> bool:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        wait_for(broken, timeout=1, interval=0.01)
