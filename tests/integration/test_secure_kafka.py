"""Every command against a broker that only speaks SASL_SSL (SCRAM-SHA-512 over TLS).

The broker (tests/secure_services.py) has a CA and a certificate made with keytool
and one SCRAM user. Through the real ``queuestream`` command: ``refresh``,
``consume``, ``monitor --once --json`` and a ``replay`` dry run work with the right
password, given in ``QUEUESTREAM_KAFKA`` or in a file named by
``QUEUESTREAM_KAFKA_SECRET_FILES``; with a wrong one each stops within 10 seconds
with one line naming the authentication failure, no traceback and no password.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli
from tests.secure_services import SecureKafka, start_sasl_ssl_kafka

pytestmark = pytest.mark.kafka

REFUSAL_LIMIT = 10.0  # seconds: a wrong password must be reported within this


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[SecureKafka]:
    kafka = start_sasl_ssl_kafka()
    try:
        yield kafka
    finally:
        kafka.stop()


def _env(kafka: SecureKafka, prefix: str, source: str, **more: str) -> dict[str, str]:
    return cli_env(
        kafka.bootstrap,
        prefix,
        QUEUESTREAM_SOURCE_URL=source,
        QUEUESTREAM_SETTLE_SECONDS="0",
        QUEUESTREAM_PARTITIONS="2",
        QUEUESTREAM_IDLE_SECONDS="0.5",
        **more,
    )


def _with_password_in_env(kafka: SecureKafka, password: str | None = None) -> dict[str, str]:
    return {"QUEUESTREAM_KAFKA": json.dumps(kafka.client_options(password))}


def _with_password_file(kafka: SecureKafka, tmp_path: Path) -> dict[str, str]:
    """Options without the password, which comes from a file as a container secret would."""
    secret = tmp_path / "kafka-password"
    secret.write_text(kafka.password + "\n")
    options = {k: v for k, v in kafka.client_options().items() if k != "sasl.password"}
    return {
        "QUEUESTREAM_KAFKA": json.dumps(options),
        "QUEUESTREAM_KAFKA_SECRET_FILES": json.dumps({"sasl.password": str(secret)}),
    }


def _ok(proc: subprocess.CompletedProcess[str], kafka: SecureKafka) -> None:
    assert proc.returncode == 0, proc.stderr
    assert kafka.password not in proc.stdout + proc.stderr


def test_every_command_works_with_the_right_password(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    source = f"sqlite:///{tmp_path / 'source.db'}"
    target = f"sqlite:///{tmp_path / 'shipping.db'}"
    group = f"{prefix}-shipping"
    env = _env(secure_kafka, prefix, source, **_with_password_in_env(secure_kafka))
    from_file = _env(secure_kafka, prefix, source, **_with_password_file(secure_kafka, tmp_path))
    assert run_cli(["sim", "--actions", "80", "--seed", "3"], env).returncode == 0

    refreshed = run_cli(["-v", "refresh", "--json"], from_file)
    _ok(refreshed, secure_kafka)
    assert json.loads(refreshed.stdout)[0]["events"] > 0
    assert "secrets from files: kafka sasl.password <- " in refreshed.stderr

    consumed = run_cli(
        ["consume", "shipping", "--target", target, "--group", group, "--until-idle"], env
    )
    _ok(consumed, secure_kafka)
    assert "synchronized" in consumed.stdout

    monitored = run_cli(["monitor", "--once", "--json"], from_file)
    _ok(monitored, secure_kafka)
    snapshot = json.loads(monitored.stdout)
    assert any(t["name"] == f"{prefix}.batches" for t in snapshot["topics"])
    assert any(g["name"] == group for g in snapshot["groups"]), snapshot["groups"]

    replayed = run_cli(["replay", "--group", group, "--to-earliest"], env)
    _ok(replayed, secure_kafka)
    assert "dry run" in replayed.stdout.lower(), replayed.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["refresh"],
        ["consume", "shipping", "--until-idle"],
        ["monitor", "--once", "--json"],
        ["replay", "--group", "nobody", "--to-earliest"],
    ],
    ids=["refresh", "consume", "monitor", "replay"],
)
def test_a_wrong_password_stops_at_once_with_one_line(
    secure_kafka: SecureKafka, tmp_path: Path, command: list[str]
) -> None:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    source = f"sqlite:///{tmp_path / 'source.db'}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = _env(
        secure_kafka,
        prefix,
        source,
        QUEUESTREAM_TARGET_URL=f"sqlite:///{tmp_path / 'target.db'}",
        **_with_password_in_env(secure_kafka, wrong),
    )
    assert run_cli(["sim", "--actions", "10"], env).returncode == 0
    started = time.monotonic()
    proc = run_cli(command, env, timeout=60)
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert took < REFUSAL_LIMIT, f"{command} took {took:.1f}s to report the refusal"
    assert "Traceback" not in output
    assert "BrokerAccessError" in output and "refused the connection" in output, output
    assert "Authentication failed" in output, output
    assert wrong not in output and secure_kafka.password not in output
