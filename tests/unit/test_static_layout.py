"""Static tools see the real package structure: every first-party import is typed.

Before the flat layout, ``queuestream.producer`` and friends were mapped onto
folders through an import hook, and mypy typed every such import as ``Any``:
a wrong use of producer or consumer code passed "mypy strict". This test writes
deliberate type errors against first-party imports and checks that mypy reports
each one with the real type.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]

PROBE = """\
from consumers.runtime import ConsumerRuntime
from producer.refresh import Refresher
from queuestream.settings import Settings
from schemas.avro import AvroCodec

a: int = Refresher.refresh
b: int = ConsumerRuntime.run
c: int = AvroCodec.encode
d: int = Settings.backoff
"""


def test_mypy_reports_a_type_error_against_each_first_party_package(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out, err, status = api.run(
        [
            "--strict",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(probe),
        ]
    )
    assert status == 1, out + err
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 4, out
    for line, real in zip(
        errors, ("Refresher", "ConsumerRuntime", "AvroCodec", "Backoff"), strict=True
    ):
        assert "[assignment]" in line and real in line, line
