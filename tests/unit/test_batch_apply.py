"""Exactly-once effect (promise 3) on a real SQLite target, without Kafka.

Batches go through :class:`consumers.batch_apply.BatchApplier` into the real
accounting target: rows, consumed offsets and the sync log commit in one
transaction or not at all; a redelivered or stale event changes nothing; a row
the database refuses goes to the dead letters while the rest commits, and over
the error budget nothing commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from consumers.assembly import Batch, Slot
from consumers.batch_apply import Applied, next_offsets, unapplied
from consumers.changes import Change
from consumers.dead_letters import DeadLetter, ErrorBudgetExceededError
from queuestream.errors import BrokerUnavailableError, DecodeError
from tests.accounting_rig import GROUP, T0, TOPIC, AccountingRig, customer_change

_customer = customer_change


def _batch(*changes: Change, poison: tuple[DeadLetter, ...] = ()) -> Batch:
    """``changes`` as the assembler hands them over: per refresh, per (table, partition)."""
    refreshes: dict[str, dict[Slot, list[Change]]] = {}
    for c in changes:
        refreshes.setdefault(c.refresh_id, {}).setdefault((c.table, c.partition), []).append(c)
    return Batch(list(refreshes.items()), list(poison))


def _undecodable(offset: int) -> DeadLetter:
    error = DecodeError("not an Avro record", table="customers", raw=b"\x00junk")
    return DeadLetter(TOPIC, 0, offset, 0, b"k", b"\x00junk", error)


class _Rig(AccountingRig):
    """The rig, applying whole batches."""

    def apply(self, *changes: Change, poison: tuple[DeadLetter, ...] = ()) -> Applied:
        return self.applier.apply(_batch(*changes, poison=poison))


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., _Rig]]:
    made: list[_Rig] = []

    def make(max_errors: int = 0) -> _Rig:
        made.append(_Rig(tmp_path, max_errors))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def test_rows_offsets_and_sync_log_commit_together(make_rig: Callable[..., _Rig]) -> None:
    rig = make_rig()
    applied = rig.apply(_customer(1, 0), _customer(2, 1))
    assert set(rig.accounts()) == {1, 2}
    assert rig.stored() == {(TOPIC, 0): 2} == applied.next_offsets
    (entry,) = rig.log()
    assert (entry["refresh_id"], entry["rows_applied"], entry["consumer_group"]) == ("r1", 2, GROUP)
    assert entry["offsets"] == {TOPIC: {"0": [0, 1]}}
    assert [e.refresh_id for e in applied.outcome.entries] == ["r1"]

    # The transaction fails after the rows were written (the dead letters cannot be
    # sent): neither the rows nor the offsets nor the log row of the batch are kept.
    rig.broker_down = True
    with pytest.raises(BrokerUnavailableError):
        rig.apply(_customer(3, 2, refresh="r2"))
    assert set(rig.accounts()) == {1, 2}
    assert rig.stored() == {(TOPIC, 0): 2}
    assert len(rig.log()) == 1

    rig.broker_down = False  # the retry commits all of it
    rig.apply(_customer(3, 2, refresh="r2"))
    assert set(rig.accounts()) == {1, 2, 3}
    assert rig.stored() == {(TOPIC, 0): 3}
    assert [e["refresh_id"] for e in rig.log()] == ["r1", "r2"]


def test_a_redelivered_batch_changes_nothing(make_rig: Callable[..., _Rig]) -> None:
    rig = make_rig()
    created = (_customer(1, 0, refresh="r1"), _customer(2, 1, refresh="r1"))
    rig.apply(*created)
    later = T0 + timedelta(hours=1)
    rig.apply(_customer(1, 2, refresh="r2", stamp=later, op="d"))
    assert set(rig.accounts()) == {2}

    # Redelivered (a crash before the Kafka commit, a rebalance): the target keeps no
    # tombstone, so only the stored offsets keep customer 1 from coming back.
    again = rig.apply(*created)
    assert set(rig.accounts()) == {2}
    assert again.skipped == 2
    assert again.outcome.entries == []
    assert again.next_offsets == {}
    assert rig.stored() == {(TOPIC, 0): 3}
    assert [e["refresh_id"] for e in rig.log()] == ["r1", "r2"]


def test_a_batch_across_the_stored_offset_applies_only_what_is_new(
    make_rig: Callable[..., _Rig],
) -> None:
    rig = make_rig()
    rig.apply(_customer(1, 0, refresh="r1"))
    rig.apply(_customer(1, 1, refresh="r2", stamp=T0 + timedelta(hours=1), op="d"))
    applied = rig.apply(_customer(1, 0, refresh="r1"), _customer(3, 2, refresh="r3"))
    assert set(rig.accounts()) == {3}
    assert applied.skipped == 1
    assert [e.refresh_id for e in applied.outcome.entries] == ["r3"]
    assert rig.stored() == {(TOPIC, 0): 3}


def test_a_stale_event_changes_nothing(make_rig: Callable[..., _Rig]) -> None:
    rig = make_rig()
    rig.apply(_customer(1, 0, stamp=T0 + timedelta(hours=1), LastName="Newer"))
    # An older version of the same key at a later offset (a re-sync that overlaps).
    applied = rig.apply(_customer(1, 1, refresh="r2", stamp=T0, LastName="Older"))
    assert rig.accounts() == {1: "Ava Newer"}
    (entry,) = applied.outcome.entries
    assert (entry.rows_applied, entry.events_stale) == (0, 1)
    assert rig.stored() == {(TOPIC, 0): 2}  # consumed all the same


def test_a_row_the_database_refuses_goes_to_dead_letters_while_the_rest_commits(
    make_rig: Callable[..., _Rig],
) -> None:
    rig = make_rig(max_errors=1)
    rig.refuse(13)
    applied = rig.apply(_customer(12, 0), _customer(13, 1), _customer(14, 2))
    assert set(rig.accounts()) == {12, 14}
    (letter,) = rig.letters
    assert (letter.topic, letter.partition, letter.offset) == (TOPIC, 0, 1)
    assert (letter.error.table, letter.error.key) == ("customers", {"CustomerID": 13})
    assert "customer 13 is blocked here" in letter.error.reason
    (entry,) = applied.outcome.entries
    assert (entry.rows_applied, entry.errors) == (2, 1)
    assert rig.stored() == {(TOPIC, 0): 3}  # the refused event is consumed: it is a dead letter
    assert rig.log()[0]["errors"] == 1
    assert rig.budget.spent == 1


def test_over_the_error_budget_nothing_commits(make_rig: Callable[..., _Rig]) -> None:
    rig = make_rig(max_errors=0)
    rig.refuse(13)
    with pytest.raises(ErrorBudgetExceededError, match="customer 13 is blocked here"):
        rig.apply(_customer(12, 0), _customer(13, 1), _customer(14, 2))
    assert rig.accounts() == {}
    assert rig.stored() == {}
    assert rig.log() == []
    assert rig.letters == []
    assert rig.budget.spent == 0


def test_undecodable_messages_are_dead_letters_counted_in_the_sync_log(
    make_rig: Callable[..., _Rig],
) -> None:
    rig = make_rig(max_errors=2)
    rig.apply(poison=(_undecodable(0),))
    rig.apply(_customer(1, 2), poison=(_undecodable(1),))
    assert [letter.offset for letter in rig.letters] == [0, 1]
    assert [(e["refresh_id"], e["errors"]) for e in rig.log()] == [("-", 1), ("r1", 1)]
    assert rig.stored() == {(TOPIC, 0): 3}
    rig.apply(poison=(_undecodable(1),))  # redelivered: not sent again
    assert len(rig.letters) == 2


def test_a_batch_of_undecodable_events_alone_is_reported_as_what_it_held(
    make_rig: Callable[..., _Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """It was reported as ``refresh -: synchronized 0 rows, 1 errors`` and counted as a
    refresh in the run's figures."""
    from consumers.runtime import ConsumerRuntime, RunStats

    rig = make_rig(max_errors=2)
    alone = rig.apply(poison=(_undecodable(0),))
    with_refresh = rig.apply(_customer(1, 2), poison=(_undecodable(1),))
    assert [e.heading() for e in alone.outcome.entries] == [
        "1 undecodable event outside any refresh (dead letter)"
    ]
    assert [e.heading() for e in with_refresh.outcome.entries] == ["refresh r1"]
    runtime = ConsumerRuntime.__new__(ConsumerRuntime)
    runtime.stats, runtime.metrics, runtime.on_batch = RunStats(), None, None
    with caplog.at_level("INFO", logger="consumers.runtime"):
        runtime._report(alone)
        runtime._report(with_refresh)
    assert (runtime.stats.batches, runtime.stats.refreshes, runtime.stats.errors) == (2, 1, 2)
    assert "refresh -" not in caplog.text
    assert "1 undecodable event outside any refresh (dead letter): synchronized" in caplog.text


def test_unapplied_and_next_offsets_need_no_database() -> None:
    batch = _batch(_customer(1, 4, refresh="r1"), _customer(2, 5, refresh="r2"))
    fresh, skipped = unapplied(batch, {(TOPIC, 0): 5})
    assert skipped == 1
    assert [r for r, _ in fresh.refreshes] == ["r2"]
    assert next_offsets(fresh) == {(TOPIC, 0): 6}
    assert next_offsets(batch) == {(TOPIC, 0): 6}
    assert unapplied(batch, {})[1] == 0
