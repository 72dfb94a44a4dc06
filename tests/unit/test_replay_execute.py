"""``replay --execute`` meeting a Kafka error that passes: a one-shot command stops."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumers.replay import OffsetMove, ReplayPlan, execute_replay
from queuestream.errors import BrokerUnavailableError
from queuestream.settings import load_settings


class _CoordinatorMoving:
    """An AdminClient whose group coordinator is still loading the group."""

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Future[Any]]:
        futures: dict[str, Future[Any]] = {}
        for group in groups:
            future: Future[Any] = Future()
            error = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "loading the group")
            future.set_exception(KafkaException(error))
            futures[group] = future
        return futures


def test_a_passing_group_error_stops_replay_saying_to_retry_not_that_it_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """replay stops on a failure that may pass, as every one-shot command does (refresh,
    rebuild), but its line said "... so it is tried again". It now says to retry."""
    import consumers.replay

    monkeypatch.setattr(consumers.replay, "admin_client", lambda _settings: _CoordinatorMoving())
    move = OffsetMove("exigo.customers", 0, 5, None, 0, 0, 9)
    plan = ReplayPlan("g", "to the earliest offsets", "Empty", [], [move])
    with pytest.raises(BrokerUnavailableError) as raised:
        execute_replay(load_settings(), plan)
    message = str(raised.value)
    assert message.startswith("Kafka: could not read consumer group g (loading the group)")
    assert "tried again" not in message
    assert message.endswith("retry in a moment")
    assert not plan.executed
