"""Fixtures of the integration tests (the services themselves are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pipeline import Pipeline


@pytest.fixture
def pipeline(sqlite_url: str, kafka_bootstrap: str, unique: str) -> Iterator[Pipeline]:
    """A SQLite source with its own topics (prefix ``unique``)."""
    pipe = Pipeline(sqlite_url, kafka_bootstrap, unique)
    try:
        yield pipe
    finally:
        pipe.close()
