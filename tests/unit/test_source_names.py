"""``source.db`` and ``source.schema`` are names, never a path and never null."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from producer.source_names import source_database, source_schema


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:///var/exigo-sync.db", "exigo-sync"),
        ("sqlite:////srv/data/exigo.sqlite", "exigo"),
        ("sqlite:///file:exigo.db?mode=ro&uri=true", "exigo"),
        ("sqlite://", "memory"),
        ("sqlite:///:memory:", "memory"),
        ("postgresql+psycopg://app@db:5432/ExigoSync", "ExigoSync"),
        ("mssql+pyodbc://app:secret@sqlhost:1433/ExigoSync?driver=x", "ExigoSync"),
    ],
)
def test_the_database_is_named_never_a_path(url: str, name: str) -> None:
    assert source_database(url) == name


def test_watermark_mode_names_the_connections_default_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exigo-sync.db'}"
    engine = sa.create_engine(url)
    try:
        with engine.connect():  # as the producer's check of the source's tables does
            pass
        assert source_schema(engine) == "main"
    finally:
        engine.dispose()


def test_without_a_reported_schema_the_dialects_usual_one() -> None:
    engine = sa.create_engine("postgresql+psycopg://app@db/exigo")  # never connects
    assert source_schema(engine) == "public"
