"""Shared fixtures: real Kafka and PostgreSQL (see tests/services.py), SQLite, names.

Session fixtures
  kafka_bootstrap      "host:port" of a working broker (transactions enabled)
  postgres_server_url  SQLAlchemy URL of a PostgreSQL server's maintenance database
  schema_registry_url  base URL of a Confluent-compatible schema registry
                       (SCHEMA_REGISTRY_URL, else a local Apicurio started for the session)
  connect_url          REST URL of a Kafka Connect worker reading kafka_bootstrap, with
                       Debezium's JDBC sink and Apicurio's converter (scripts/connect-local.sh)
Function fixtures
  postgres_url         SQLAlchemy URL of a fresh, empty PostgreSQL database (dropped after)
  sqlite_url           SQLAlchemy URL of a fresh SQLite file in tmp_path
  source_url           sqlite_url or postgres_url; tests using it run once per backend
                       (narrow with
                       @pytest.mark.parametrize("source_url", ["sqlite"], indirect=True))
  unique               short unique name prefix, e.g. "t1a2b3c4d5e", for topics and groups

A service that cannot be had fails the tests that need it (never skips).
Tests using Kafka / PostgreSQL get the ``kafka`` / ``postgres`` markers
automatically, so ``pytest -m "not kafka and not postgres"`` runs without services.

With pytest-xdist (``pytest -n N``, as ``make test`` runs it) the controller starts
one broker, one PostgreSQL and one registry before the workers exist (only PostgreSQL
when every path asked for is under tests/unit; a Connect worker too when the paths include
tests/integration/test_debezium_sink.py), and stops them at the end; the workers'
session fixtures find them in the environment (``services.start_shared``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url

from bench.scratch import STATE_DIR_VARIABLE
from tests import services

# Property tests assert what the code does, never how fast: on 2 cores busy with a
# benchmark (or CI's services), an example may take longer than Hypothesis's 200 ms.
settings.register_profile(
    "queuestream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("queuestream")

KAFKA_FIXTURES = {"kafka_bootstrap"}
POSTGRES_FIXTURES = {"postgres_server_url", "postgres_url"}
UNIT_TESTS = Path(__file__).resolve().parent / "unit"
CONNECT_TESTS = Path(__file__).resolve().parent / "integration" / "test_debezium_sink.py"
_SHARED = pytest.StashKey[list[services.Service]]()
#: The state folder this session made (removed at its end).
_STATE_DIR = pytest.StashKey[str]()


def _starts_workers(config: pytest.Config) -> bool:
    """This process is a pytest-xdist controller, about to start its workers."""
    return (
        not hasattr(config, "workerinput")
        and config.getoption("dist", "no") != "no"
        and bool(config.getoption("tx", None))
        and not config.getoption("collectonly")
    )


def _shared_services(config: pytest.Config) -> tuple[str, ...]:
    """What the tests asked for need: a few unit tests use PostgreSQL, and only that; one
    module uses a Kafka Connect worker."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if paths and all(path.is_relative_to(UNIT_TESTS) for path in paths):
        return ("postgres",)
    kinds: tuple[str, ...] = ("kafka", "postgres", "registry")
    if not paths or any(CONNECT_TESTS.is_relative_to(path) for path in paths):
        kinds += ("connect",)
    return kinds


def pytest_configure(config: pytest.Config) -> None:
    # Producers cache what they published under state_dir: a throwaway folder, not var/,
    # made by the process that starts the session (xdist's workers inherit it) and
    # removed when that session ends.
    if STATE_DIR_VARIABLE not in os.environ:
        folder = tempfile.mkdtemp(prefix="queuestream-test-state-")
        os.environ[STATE_DIR_VARIABLE] = folder
        config.stash[_STATE_DIR] = folder
    if _starts_workers(config):
        config.stash[_SHARED] = services.start_shared(_shared_services(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    services.stop_all(config.stash.get(_SHARED, []))
    folder = config.stash.get(_STATE_DIR, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In CI (CI=true) a skipped test fails the run: every test must really run there."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("CI") != "true" or reporter is None or hasattr(session.config, "workerinput"):
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.ensure_newline()
        reporter.write_line(f"CI=true: {len(skipped)} skipped, but every test must run in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header(config: pytest.Config) -> list[str]:
    shared = config.stash.get(_SHARED, [])
    return [f"shared with the workers: {service.description}" for service in shared]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if names & POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)


def _start(start: Callable[[], services.Service], what: str) -> services.Service:
    try:
        return start()
    except services.ServiceError as exc:
        error = str(exc)
    pytest.fail(f"no {what} for the tests: {error}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    service = _start(services.start_kafka, "Kafka broker")
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    service = _start(services.start_postgres, "PostgreSQL server")
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    service = _start(services.start_schema_registry, "schema registry")
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def connect_url(kafka_bootstrap: str) -> Iterator[str]:
    service = _start(lambda: services.start_connect(kafka_bootstrap), "Kafka Connect worker")
    try:
        yield service.address
    finally:
        service.stop()


@pytest.fixture(scope="session")
def _postgres_admin(postgres_server_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        postgres_server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def postgres_database(_postgres_admin: sa.Engine, unique: str) -> Iterator[Callable[[str], str]]:
    """A factory of fresh PostgreSQL databases (``suffix`` names each); dropped afterwards."""
    created: list[str] = []

    def make(suffix: str) -> str:
        name = f"qs_{unique}_{suffix}"
        with _postgres_admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        url = make_url(_postgres_admin.url).set(database=name)
        return url.render_as_string(hide_password=False)

    try:
        yield make
    finally:
        with _postgres_admin.connect() as conn:
            for name in created:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: Callable[[str], str]) -> str:
    return postgres_database("source")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'source.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def source_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    msg = f"source_url: unknown backend {request.param!r} (use 'sqlite' or 'postgres')"
    raise ValueError(msg)


@pytest.fixture
def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
