"""A schema registry that is down, or is not a registry, at start-up (registry mode).

Against the real broker and a real registry (Apicurio's Confluent-compatible API,
tests/services.py):

* ``produce`` started while nothing listens at the registry's URL keeps running,
  logs each failed attempt with its next wait, and once a registry is started at
  that URL publishes everything, once;
* the one-shot ``refresh`` exits 1 with one line that names the registry's URL
  (password masked) and says what to do;
* a URL that answers but not as a registry (the registry's server outside its
  Confluent API: a 404) stops ``refresh`` and ``produce`` at once with one line;
* the registry answering that it does not know a schema id is no outage: the
  message is one that cannot be decoded.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from producer.simulator import Simulator
from queuestream.databases import create_engine
from queuestream.errors import DecodeError
from queuestream.sync_schema import create_source_schema
from schemas.avro import AvroCodec
from tests import services
from tests.helpers import CLI, cli_env, run_cli, stop_gracefully, wait_for
from tests.integration.kafka_readback import committed_changes
from tests.integration.source_versions import (
    assert_exactly_once,
    source_versions,
    wait_all_published,
)

#: The registry's user name and password in the URL: the password is never printed.
LOGIN = "qsuser"
SECRET = "registry-horse-9931"
#: Bounds of the waits below (seconds).
FAILURES_SEEN_TIMEOUT = 60
STOP_TIMEOUT = 60
GIVE_UP = 60  # a one-shot command still running after this is waiting forever
PROMPT = 10  # a permanent mistake stops a command within this
_ERROR_LINE = re.compile(r"^[A-Za-z]+Error: ")


@pytest.fixture
def source(tmp_path: Path) -> Iterator[sa.Engine]:
    """A SQLite sync database with some activity."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}", writer=True)
    create_source_schema(engine)
    Simulator(engine, ZoneInfo("UTC"), seed=7).run(80, per_transaction=10)
    try:
        yield engine
    finally:
        engine.dispose()


def _env(source: sa.Engine, bootstrap: str, prefix: str, registry: str) -> dict[str, str]:
    return cli_env(
        bootstrap,
        prefix,
        QUEUESTREAM_SOURCE_URL=source.url.render_as_string(hide_password=False),
        QUEUESTREAM_SCHEMA_REGISTRY_URL=registry,
        QUEUESTREAM_SETTLE_SECONDS="0",
        QUEUESTREAM_RETRY_BACKOFF_SECONDS="0.5",
        QUEUESTREAM_TARGET_RETRY_MAX_SECONDS="2",
        QUEUESTREAM_BROKER_TIMEOUT_SECONDS="5",
    )


def _with_login(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{LOGIN}:{SECRET}@{parts.netloc}").geturl()


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert SECRET not in output
    errors = [line for line in done.stderr.splitlines() if _ERROR_LINE.match(line)]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_produce_waits_for_a_registry_that_is_down_and_refresh_says_so(
    source: sa.Engine,
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (port,) = services.free_ports(1)  # nothing listens here until the registry starts
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    env = _env(source, kafka_bootstrap, unique, _with_login(url))
    masked = f"http://{LOGIN}:***@127.0.0.1:{port}/apis/ccompat/v7"

    done = run_cli(["refresh"], env, timeout=GIVE_UP)
    line = _one_error_line(done)
    assert line.startswith(f"RetriableError: schema registry at {masked} is unreachable ("), line
    assert "start it or fix schema_registry_url" in line

    log_path = tmp_path / "produce.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*CLI, "produce", "--interval", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        registry: services.Service | None = None
        try:

            def running() -> None:
                assert process.poll() is None, log_path.read_text()[-3000:]

            def failed_attempts() -> int:
                running()
                lines = log_path.read_text().splitlines()
                return sum(
                    1
                    for line in lines
                    if "failed (attempt" in line
                    and f"schema registry at {masked} is unreachable" in line
                    and "; retrying in " in line
                )

            wait_for(
                lambda: failed_attempts() >= 2,
                timeout=FAILURES_SEEN_TIMEOUT,
                interval=0.2,
                message="two failed attempts logged while the registry is down",
            )
            registry = services.start_local_schema_registry(port)
            monkeypatch.setenv("SCHEMA_REGISTRY_URL", url)  # committed_changes decodes with it
            wait_all_published(source, kafka_bootstrap, unique, running)
            assert stop_gracefully(process, STOP_TIMEOUT)
            assert process.returncode == 0, log_path.read_text()[-3000:]
            published, _ = committed_changes(kafka_bootstrap, unique)
            assert_exactly_once(published, source_versions(source))
        finally:
            stop_gracefully(process, STOP_TIMEOUT)
            if registry is not None:
                registry.stop()
    output = log_path.read_text()
    assert "Traceback" not in output
    assert SECRET not in output
    assert "works again after" in output


def test_a_url_that_is_not_a_registry_stops_at_once(
    source: sa.Engine, kafka_bootstrap: str, unique: str, schema_registry_url: str
) -> None:
    # The registry's own server, outside its Confluent-compatible API: it answers 404.
    parts = urlsplit(schema_registry_url)
    not_api = f"{parts.scheme}://{parts.netloc}/"
    env = _env(source, kafka_bootstrap, unique, _with_login(not_api))
    masked = f"{parts.scheme}://{LOGIN}:***@{parts.netloc}/"
    for args in (["refresh"], ["produce", "--interval", "1"]):
        started = time.monotonic()
        done = run_cli(args, env, timeout=GIVE_UP)
        elapsed = time.monotonic() - started
        line = _one_error_line(done)
        assert elapsed < PROMPT, f"took {elapsed:.1f}s: {line}"
        assert line.startswith(f"ConfigurationError: schema registry at {masked} answered HTTP 404")
        assert "is not a Confluent-compatible schema registry API: fix schema_registry_url" in line


def test_a_schema_id_the_registry_does_not_know_is_a_message_that_cannot_be_decoded(
    schema_registry_url: str,
) -> None:
    """The registry answering "no such schema" is an answer, not an outage: the message is
    what cannot be decoded (and goes to the dead letters), as before."""
    codec = AvroCodec.from_url("exigo", schema_registry_url)
    framed = b"\x00" + (987_654).to_bytes(4, "big") + b"\x02"
    with pytest.raises(DecodeError, match="cannot decode key"):
        codec.decode("customers", "key", framed)
