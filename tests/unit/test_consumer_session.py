"""The consumer group session: short by default (failover within 10 s), overridable, checked."""

from __future__ import annotations

import pytest

from queuestream.errors import ConfigurationError
from queuestream.kafka_clients import consumer_config
from queuestream.settings import load_settings


def test_consumers_heartbeat_every_second_on_the_brokers_shortest_session() -> None:
    config = consumer_config(load_settings(), "g")
    assert config["session.timeout.ms"] == 6000
    assert config["heartbeat.interval.ms"] == 1000


def test_settings_and_pass_through_options_override_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUESTREAM_SESSION_TIMEOUT_MS", "10000")
    monkeypatch.setenv("QUEUESTREAM_HEARTBEAT_INTERVAL_MS", "3000")
    config = consumer_config(load_settings(), "g")
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (10000, 3000)
    monkeypatch.setenv("QUEUESTREAM_KAFKA", '{"session.timeout.ms": "45000"}')
    assert consumer_config(load_settings(), "g")["session.timeout.ms"] == "45000"


def test_a_heartbeat_not_below_the_session_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUESTREAM_HEARTBEAT_INTERVAL_MS", "6000")
    with pytest.raises(ConfigurationError, match=r"heartbeat_interval_ms 6000 must be below"):
        load_settings()


def test_a_bounded_run_asks_for_short_fetches_at_a_partitions_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild learns a partition is read to its stop from the empty fetch at its end,
    which the broker would hold for 500 ms; the Kafka options still win."""
    from consumers.runtime import ConsumerRuntime, StopAt

    runtime = ConsumerRuntime.__new__(ConsumerRuntime)
    runtime.settings = load_settings()
    runtime.stop_at = None
    assert runtime._bounded_fetch() == {}  # a group member waits as long as it likes
    runtime.stop_at = StopAt(offsets={}, until_ms=0, markers_end=0)
    assert runtime._bounded_fetch() == {"fetch.wait.max.ms": 50}
    monkeypatch.setenv("QUEUESTREAM_KAFKA", '{"fetch.wait.max.ms": "200"}')
    runtime.settings = load_settings()
    assert runtime._bounded_fetch() == {}
