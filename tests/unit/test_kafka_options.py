"""Every Kafka client gets the user's options; secrets from files; no secret in a repr or log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from queuestream import kafka_clients
from queuestream.errors import ConfigurationError
from queuestream.kafka_clients import (
    CONSUMER_ONLY,
    PRODUCER_ONLY,
    admin_client,
    client_options,
    consumer_config,
    producer_config,
)
from queuestream.settings import Settings, load_settings

SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "alice",
    "sasl.password": "s3cret-pw",
    "ssl.ca.location": "/etc/ca.pem",
}


def _settings(**kafka: str) -> Settings:
    return load_settings(kafka={**SASL, **kafka})


class _FakeAdmin:
    """Records the configuration admin_client builds; the broker always answers."""

    seen: dict[str, Any] = {}  # noqa: RUF012 (a record of the last call)

    def __init__(self, config: dict[str, Any]) -> None:
        _FakeAdmin.seen = config

    def list_topics(self, timeout: float) -> object:
        return object()


def test_admin_client_gets_the_security_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug of issue 13: the admin client connected in plaintext."""
    monkeypatch.setattr(kafka_clients, "AdminClient", _FakeAdmin)
    admin_client(_settings(**{"linger.ms": "7", "group.id": "g", "session.timeout.ms": "6000"}))
    for key, value in SASL.items():
        assert _FakeAdmin.seen[key] == value
    assert not (set(_FakeAdmin.seen) & (PRODUCER_ONLY | CONSUMER_ONLY)), _FakeAdmin.seen


def test_each_role_keeps_only_what_it_reads() -> None:
    settings = _settings(**{"linger.ms": "7", "session.timeout.ms": "6000"})
    producer = producer_config(settings)
    consumer = consumer_config(settings, "group")
    for config in (producer, consumer, client_options(settings, "admin")):
        for key, value in SASL.items():
            assert config[key] == value
    assert producer["linger.ms"] == "7" and "session.timeout.ms" not in producer
    assert consumer["session.timeout.ms"] == "6000" and "linger.ms" not in consumer
    # the guarantees stay forced whatever the user passes
    assert producer["enable.idempotence"] is True
    assert consumer["isolation.level"] == "read_committed"


def test_secret_files_fill_kafka_options_and_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kafka_secret = tmp_path / "kafka"
    kafka_secret.write_text("from-file-pw\n")
    db_secret = tmp_path / "db"
    db_secret.write_text("db-pw-from-file")
    monkeypatch.setenv("QUEUESTREAM_KAFKA_SECRET_FILES", f'{{"sasl.password": "{kafka_secret}"}}')
    monkeypatch.setenv("QUEUESTREAM_SOURCE_PASSWORD_FILE", str(db_secret))
    monkeypatch.setenv("QUEUESTREAM_SOURCE_URL", "postgresql+psycopg://app@db.example/exigo")
    with caplog.at_level(logging.INFO, logger="queuestream.settings"):
        settings = load_settings(kafka=SASL)
    assert client_options(settings, "admin")["sasl.password"] == "from-file-pw"  # file wins
    assert settings.source_url == "postgresql+psycopg://app:db-pw-from-file@db.example/exigo"
    assert f"kafka sasl.password <- {kafka_secret}" in caplog.text
    assert f"source_password <- {db_secret}" in caplog.text
    shown = repr(settings) + str(settings) + caplog.text
    for secret in ("from-file-pw", "db-pw-from-file", SASL["sasl.password"]):
        assert secret not in shown


def test_a_missing_or_empty_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigurationError, match=r"kafka_secret_files.*cannot read .*nope"):
        load_settings(kafka_secret_files={"sasl.password": missing})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match=r"source_password_file: .*empty"):
        load_settings(source_password_file=empty)
    with pytest.raises(ConfigurationError, match="target_url is not"):
        load_settings(target_password_file=empty)


def test_a_secret_file_with_a_byte_order_mark_gives_the_password_without_it(
    tmp_path: Path,
) -> None:
    """Some Windows editors write a byte-order mark first: it is no part of the secret."""
    marked = tmp_path / "marked"
    marked.write_bytes(b"\xef\xbb\xbfbom-pw\r\n")
    settings = load_settings(kafka=SASL, kafka_secret_files={"sasl.password": marked})
    assert client_options(settings, "admin")["sasl.password"] == "bom-pw"
    other = tmp_path / "utf16"
    other.write_bytes("pw".encode("utf-16"))
    refused = r"kafka_secret_files.sasl.password: .*utf16 is not UTF-8"
    with pytest.raises(ConfigurationError, match=refused):
        load_settings(kafka_secret_files={"sasl.password": other})


def test_a_refusal_is_a_configuration_error_without_the_password() -> None:
    settings = _settings()
    errors = kafka_clients.ClientErrors(settings)
    errors.refused = "SASL authentication error: Authentication failed"
    with pytest.raises(ConfigurationError, match="refused the connection") as caught:
        kafka_clients.raise_if_refused(errors, settings.kafka_bootstrap_servers)
    assert SASL["sasl.password"] not in str(caught.value)


def test_every_client_reconnects_soon_unless_the_user_says_otherwise() -> None:
    """A new client's first answer waited 50 ms after librdkafka dropped its bootstrap
    connection, at the default backoff of 100 ms (bench/recovery.py's plan time); every
    role starts from 20 ms, and the user's own value wins."""
    settings = _settings()
    configs = (producer_config(settings), consumer_config(settings, "g"))
    for config in (*configs, client_options(settings, "admin")):
        assert config["reconnect.backoff.ms"] == 20
    mine = _settings(**{"reconnect.backoff.ms": "250"})
    for config in (producer_config(mine), consumer_config(mine, "g")):
        assert config["reconnect.backoff.ms"] == "250"
