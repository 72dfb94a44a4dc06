"""A benchmark run's producers keep their published state in a folder removed at the end."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from bench.scratch import STATE_DIR_VARIABLE, scratch_state_dir
from bench.session import main_with
from queuestream.settings import load_settings


def test_the_state_folder_is_the_settings_while_the_run_lasts_and_gone_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, "var/state")
    with scratch_state_dir() as folder:
        assert os.environ[STATE_DIR_VARIABLE] == folder
        assert load_settings().state_dir == Path(folder)
        (Path(folder) / "prefix.producer.sqlite").write_bytes(b"state")
    assert not Path(folder).exists()
    assert os.environ[STATE_DIR_VARIABLE] == "var/state"


def test_a_variable_not_set_before_is_not_set_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATE_DIR_VARIABLE, raising=False)
    with scratch_state_dir():
        pass
    assert STATE_DIR_VARIABLE not in os.environ


def test_every_benchmark_command_runs_in_a_scratch_state_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(STATE_DIR_VARIABLE, raising=False)
    seen: list[str] = []

    def run(_args: argparse.Namespace) -> dict[str, Any]:
        folder = os.environ[STATE_DIR_VARIABLE]
        seen.append(folder)
        (Path(folder) / "left.sqlite").write_bytes(b"state")
        return {"ok": True}

    args = argparse.Namespace(json=True, verbose=False)
    assert main_with(args, run, lambda _report: None) == 0
    assert '"ok": true' in capsys.readouterr().out
    (folder,) = seen
    assert not Path(folder).exists()
