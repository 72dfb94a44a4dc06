"""Settings: defaults, environment, config file, flags, and errors that say what to fix."""

from __future__ import annotations

import os
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


def test_a_kafka_option_confluent_kafka_reads_as_a_bool_may_be_given_as_text() -> None:
    """``QUEUESTREAM_KAFKA='{"delivery.report.only.error": "true"}'`` used to end in a
    TypeError from deep inside the producer's constructor."""
    from confluent_kafka import Producer

    from queuestream.kafka_clients import producer_config

    settings = load_settings(None, kafka={"delivery.report.only.error": "True"})
    config = producer_config(settings)
    assert config["delivery.report.only.error"] is True
    Producer(config).flush(0)  # confluent-kafka takes it (a str raised TypeError)
    with pytest.raises(ConfigurationError, match="must be true or false"):
        load_settings(None, kafka={"delivery.report.only.error": "yes"})


@pytest.mark.parametrize("key", ["error_cb", "logger", "on_delivery", "stats_cb"])
def test_kafka_options_that_take_python_objects_are_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{key}.*cannot be set from settings"):
        load_settings(None, kafka={key: "anything"})


@pytest.mark.parametrize(
    ("field", "generic", "values"),
    [
        ("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", ["a:9092", "b:9092", "c:9092"]),
        ("schema_registry_url", "SCHEMA_REGISTRY_URL", ["http://a", "http://b", "http://c"]),
    ],
)
def test_the_queuestream_variable_wins_over_the_generic_one(
    monkeypatch: pytest.MonkeyPatch, field: str, generic: str, values: list[str]
) -> None:
    # The generic variable won: the field's own name matched it, case aside.
    generic_value, ours, flag = values
    monkeypatch.setenv(generic, generic_value)
    assert getattr(load_settings(), field) == generic_value
    monkeypatch.setenv(f"QUEUESTREAM_{generic}", ours)
    assert getattr(load_settings(), field) == ours
    assert getattr(load_settings(None, **{field: flag}), field) == flag  # a flag beats both


def test_the_settings_from_the_environment_are_listed_generic_variables_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL were used but left out of the line;
    the line names settings and variables, never their values."""
    for name in [n for n in os.environ if n.upper().startswith("QUEUESTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.0.0.9:9092")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://user:secret@registry.internal:8081")
    monkeypatch.setenv("QUEUESTREAM_PARTITIONS", "4")
    with caplog.at_level("INFO", logger="queuestream.settings"):
        load_settings()
    [line] = [r.getMessage() for r in caplog.records if "from the environment" in r.getMessage()]
    assert line == (
        "settings from the environment: kafka_bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS), "
        "partitions, schema_registry_url (SCHEMA_REGISTRY_URL)"
    )
    caplog.clear()
    monkeypatch.setenv("QUEUESTREAM_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.8:9092")  # it wins
    with caplog.at_level("INFO", logger="queuestream.settings"):
        settings = load_settings()
    assert settings.kafka_bootstrap_servers == "10.0.0.8:9092"
    assert "kafka_bootstrap_servers, partitions, schema_registry_url (" in caplog.text
