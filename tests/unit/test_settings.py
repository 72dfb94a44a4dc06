"""Settings: defaults, environment, config file, flags, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from queuestream.errors import ConfigurationError
from queuestream.settings import DEFAULT_BOOTSTRAP_SERVERS, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == DEFAULT_BOOTSTRAP_SERVERS
    assert settings.source_url.startswith("sqlite:///")
    assert settings.effective_transactional_id == "queuestream-exigo"
    assert settings.sensitive_columns["customer_accounts"]["BankAccountNumber"] == "mask"


def test_environment_file_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "qs.toml"
    config.write_text('topic_prefix = "fromfile"\npartitions = 3\n[kafka]\n"linger.ms" = "5"\n')
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    monkeypatch.setenv("QUEUESTREAM_PARTITIONS", "4")
    settings = load_settings(config, topic_prefix="fromflag")
    assert settings.kafka_bootstrap_servers == "10.0.0.1:9092"
    assert settings.partitions == 4  # environment beats the file
    assert settings.topic_prefix == "fromflag"  # flags beat everything
    assert settings.kafka == {"linger.ms": "5"}


def test_invalid_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUESTREAM_SOURCE_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigurationError, match=r"source_timezone.*IANA"):
        load_settings()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
