"""Exactly-once effect (promise 3) on a real SQLite target, without Kafka.

Batches go through :class:`consumers.batch_apply.BatchApplier` into the real
accounting target: rows, consumed offsets and the sync log commit in one
transaction or not at all; a redelivered or stale event changes nothing; a row
the database refuses goes to the dead letters while the rest commits, and over
the error budget nothing commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from consumers import offsets, sync_log, target_db, target_named
from consumers.assembly import Batch, Slot
from consumers.batch_apply import Applied, BatchApplier, next_offsets, unapplied
from consumers.changes import Change
from consumers.dead_letters import DeadLetter, ErrorBudget, ErrorBudgetExceededError
from consumers.offsets import OffsetStore
from queuestream.databases import create_engine
from queuestream.errors import BrokerUnavailableError, DecodeError
from tests.source_changes import change

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TOPIC = "test.customers"  # where tests.source_changes.change puts customers
GROUP = "queuestream-test-accounting"


def _customer(
    cid: int, offset: int, *, refresh: str = "r1", stamp: datetime = T0, op: str = "u", **more: Any
) -> Change:
    row = {
        "CustomerID": cid,
        "FirstName": "Ava",
        "LastName": f"Number{cid}",
        "Company": None,
        "Email": f"ava{cid}@example.com",
        "CurrencyCode": "usd",
        "ModifiedDate": stamp,
        **more,
    }
    made = change("customers", row, op=op, refresh_id=refresh)
    return dataclasses.replace(made, offset=offset)


def _batch(*changes: Change, poison: tuple[DeadLetter, ...] = ()) -> Batch:
    """``changes`` as the assembler hands them over: per refresh, per (table, partition)."""
    refreshes: dict[str, dict[Slot, list[Change]]] = {}
    for c in changes:
        refreshes.setdefault(c.refresh_id, {}).setdefault((c.table, c.partition), []).append(c)
    return Batch(list(refreshes.items()), list(poison))


def _undecodable(offset: int) -> DeadLetter:
    error = DecodeError("not an Avro record", table="customers", raw=b"\x00junk")
    return DeadLetter(TOPIC, 0, offset, 0, b"k", b"\x00junk", error)


class _Rig:
    """An accounting target in a SQLite file and a BatchApplier writing to it."""

    def __init__(self, tmp_path: Path, max_errors: int) -> None:
        self.engine = create_engine(f"sqlite:///{tmp_path / 'accounting.db'}", writer=True)
        self.target = target_named("accounting")
        target_db.prepare(self.engine, self.target)
        self.letters: list[DeadLetter] = []
        self.broker_down = False
        self.budget = ErrorBudget(max_errors)
        self.applier = BatchApplier(
            self.target,
            self.engine,
            OffsetStore("accounting", GROUP),
            member="test:1",
            budget=self.budget,
            dead_letters=self._publish,
        )

    def _publish(self, letters: list[DeadLetter]) -> None:
        if self.broker_down:
            msg = "cannot write dead letters (broker down); the batch was not committed"
            raise BrokerUnavailableError(msg)
        self.letters.extend(letters)

    def apply(self, *changes: Change, poison: tuple[DeadLetter, ...] = ()) -> Applied:
        return self.applier.apply(_batch(*changes, poison=poison))

    def accounts(self) -> dict[int, str]:
        """customer_id -> name of every ledger account."""
        table = self.target.metadata.tables["ledger_accounts"]
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(table.c.customer_id, table.c.name)).all())

    def stored(self) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            return offsets.stored_offsets(conn, "accounting")

    def log(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return sync_log.read(conn, "accounting")

    def refuse(self, cid: int) -> None:
        """Make the database itself refuse customer ``cid`` (the target's checks pass it)."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_{cid} BEFORE INSERT ON ledger_accounts "
                f"WHEN NEW.customer_id = {cid} "
                f"BEGIN SELECT RAISE(ABORT, 'customer {cid} is blocked here'); END"
            )


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., _Rig]]:
    made: list[_Rig] = []

    def make(max_errors: int = 0) -> _Rig:
        made.append(_Rig(tmp_path, max_errors))
        return made[-1]

    yield make
    for rig in made:
        rig.engine.dispose()


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


def test_unapplied_and_next_offsets_need_no_database() -> None:
    batch = _batch(_customer(1, 4, refresh="r1"), _customer(2, 5, refresh="r2"))
    fresh, skipped = unapplied(batch, {(TOPIC, 0): 5})
    assert skipped == 1
    assert [r for r, _ in fresh.refreshes] == ["r2"]
    assert next_offsets(fresh) == {(TOPIC, 0): 6}
    assert next_offsets(batch) == {(TOPIC, 0): 6}
    assert unapplied(batch, {})[1] == 0
