"""Every benchmark report says whether the Avro readers and writers ran compiled."""

from __future__ import annotations

import argparse

import pytest

from bench.environment import environment, environment_line
from schemas.avro import compiled_reader, compiled_writer


def _environment() -> dict[str, object]:
    return environment("127.0.0.1:9", argparse.Namespace(partitions=6, kafka=None))


def test_the_report_says_which_avro_code_ran() -> None:
    env = _environment()
    assert env["avro_compiled"] == {
        "readers": compiled_reader.AVAILABLE,
        "writers": compiled_writer.AVAILABLE,
    }


@pytest.mark.parametrize("readers", [True, False])
@pytest.mark.parametrize("writers", [True, False])
def test_the_readable_line_says_when_avro_ran_in_python(
    readers: bool, writers: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled_reader, "AVAILABLE", readers)
    monkeypatch.setattr(compiled_writer, "AVAILABLE", writers)
    line = environment_line(_environment(), "kafka")
    assert ("Avro partly in Python" in line) is not (readers and writers)
