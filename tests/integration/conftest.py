"""Fixtures of the integration tests (the services themselves are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests import services
from tests.integration.pipeline import Pipeline


@pytest.fixture
def pipeline(sqlite_url: str, kafka_bootstrap: str, unique: str) -> Iterator[Pipeline]:
    """A SQLite source with its own topics (prefix ``unique``)."""
    pipe = Pipeline(sqlite_url, kafka_bootstrap, unique)
    try:
        yield pipe
    finally:
        pipe.close()


def _own(start: Callable[[], services.Service], what: str) -> Iterator[services.Service]:
    """A service of the test module's own, stopped at the end: an outage test stops and
    starts it (``services.control``), which the shared session services never are."""
    try:
        service = start()
    except services.ServiceError as exc:
        pytest.fail(f"no {what} of the module's own: {exc}", pytrace=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[services.Service]:
    yield from _own(services.start_local_postgres, "PostgreSQL server")


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[services.Service]:
    yield from _own(services.start_local_kafka, "Kafka broker")
