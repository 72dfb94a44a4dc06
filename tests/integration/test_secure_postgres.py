"""Source and target reached over TLS with ``sslmode=verify-full``, passwords from files.

The PostgreSQL here (tests/secure_services.py) accepts TLS connections only and
SCRAM passwords; its certificate comes from a keytool CA. Through the real
``queuestream`` command the source is simulated, refreshed into Kafka, applied to a
shipping target on the same server and verified, with both passwords read from
files (``QUEUESTREAM_SOURCE_PASSWORD_FILE`` / ``QUEUESTREAM_TARGET_PASSWORD_FILE``)
and never printed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import cli_env, run_cli
from tests.secure_services import TlsPostgres, start_tls_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    server = start_tls_postgres()
    try:
        yield server
    finally:
        server.stop()


def _create(server: TlsPostgres, user: str, password: str, database: str) -> None:
    engine = sa.create_engine(server.admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f"CREATE DATABASE {database} OWNER {user}"))
    engine.dispose()


def test_source_and_target_over_verified_tls(
    tls_postgres: TlsPostgres, kafka_bootstrap: str, tmp_path: Path
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    source_password, target_password = f"src-{uuid.uuid4().hex}", f"tgt-{uuid.uuid4().hex}"
    _create(tls_postgres, f"{name}_src", source_password, f"{name}_sync")
    _create(tls_postgres, f"{name}_tgt", target_password, f"{name}_ship")
    (tmp_path / "source-password").write_text(source_password + "\n")
    (tmp_path / "target-password").write_text(target_password + "\n")
    env = cli_env(
        kafka_bootstrap,
        name,
        QUEUESTREAM_SOURCE_URL=tls_postgres.url(f"{name}_src", f"{name}_sync"),
        QUEUESTREAM_SOURCE_PASSWORD_FILE=str(tmp_path / "source-password"),
        QUEUESTREAM_TARGET_URL=tls_postgres.url(f"{name}_tgt", f"{name}_ship"),
        QUEUESTREAM_TARGET_PASSWORD_FILE=str(tmp_path / "target-password"),
        QUEUESTREAM_PARTITIONS="2",
        QUEUESTREAM_IDLE_SECONDS="0.5",
        # The simulator writes with the server's own clock and is done before the
        # refresh starts: no margin is needed for writers with a slow clock. With the
        # default second of it, rows written in the last second before `refresh` were
        # left to the next one (rightly), and `verify` found them missing once the
        # simulator and the refresh's start-up had become fast enough.
        QUEUESTREAM_PG_CLOCK_ALLOWANCE_SECONDS="0",
    )
    steps = [
        ["sim", "--actions", "150", "--seed", "4"],
        ["-v", "refresh"],
        ["consume", "shipping", "--until-idle"],
        ["verify", "shipping"],
    ]
    for args in steps:
        done = run_cli(args, env)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert source_password not in output and target_password not in output
        if args[0] == "-v":
            assert "secrets from files: source_password <- " in done.stderr

    # The server takes TLS only: the same user without TLS is turned away.
    plain = tls_postgres.url(f"{name}_src", f"{name}_sync", source_password).replace(
        "sslmode=verify-full", "sslmode=disable"
    )
    with pytest.raises(sa.exc.OperationalError, match="reject"):
        sa.create_engine(plain).connect().close()
    # And verify-full checks the certificate: a CA that did not sign it is refused.
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text((tls_postgres.ca_pem.parent / "server.pem").read_text())
    wrong = tls_postgres.url(f"{name}_src", f"{name}_sync", source_password).replace(
        str(tls_postgres.ca_pem), str(other_ca)
    )
    with pytest.raises(sa.exc.OperationalError, match="certificate"):
        sa.create_engine(wrong).connect().close()
