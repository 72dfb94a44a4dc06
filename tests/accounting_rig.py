"""An accounting target in a SQLite file with a BatchApplier writing to it, and no Kafka.

The unit tests of batch apply (tests/unit/test_batch_apply.py) and of applying in
parts (tests/unit/test_streaming.py) write customers through it and read back what
committed: ledger accounts, stored offsets, the sync log, the dead letters sent.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from consumers import offsets, sync_log, target_db, target_named
from consumers.batch_apply import BatchApplier
from consumers.changes import Change
from consumers.dead_letters import DeadLetter, ErrorBudget
from consumers.offsets import OffsetStore
from queuestream.databases import create_engine
from queuestream.errors import BrokerUnavailableError
from tests.source_changes import change

__all__ = ["GROUP", "T0", "TOPIC", "AccountingRig", "customer_change"]

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TOPIC = "test.customers"  # where tests.source_changes.change puts customers
GROUP = "queuestream-test-accounting"


def customer_change(
    cid: int,
    offset: int,
    *,
    refresh: str = "r1",
    stamp: datetime = T0,
    op: str = "u",
    partition: int = 0,
    **more: Any,
) -> Change:
    """A change of customer ``cid`` read at ``offset`` of ``test.customers[partition]``."""
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
    made = change("customers", row, op=op, refresh_id=refresh, partition=partition)
    return dataclasses.replace(made, offset=offset)


class AccountingRig:
    """An accounting target in ``tmp_path`` and a BatchApplier writing to it.

    Reads go through an engine of their own: they see what committed, even while the
    applier's transaction is open (SQLite writers begin IMMEDIATE).
    """

    def __init__(self, tmp_path: Path, max_errors: int = 0) -> None:
        url = f"sqlite:///{tmp_path / 'accounting.db'}"
        self.engine = create_engine(url, writer=True)
        self.reader = create_engine(url)
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

    def accounts(self) -> dict[int, str]:
        """customer_id -> name of every ledger account."""
        table = self.target.metadata.tables["ledger_accounts"]
        with self.reader.connect() as conn:
            return dict(conn.execute(sa.select(table.c.customer_id, table.c.name)).all())

    def stored(self) -> dict[tuple[str, int], int]:
        with self.reader.connect() as conn:
            return offsets.stored_offsets(conn, "accounting")

    def log(self) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            return sync_log.read(conn, "accounting")

    def refuse(self, cid: int) -> None:
        """Make the database itself refuse customer ``cid`` (the target's checks pass it)."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_{cid} BEFORE INSERT ON ledger_accounts "
                f"WHEN NEW.customer_id = {cid} "
                f"BEGIN SELECT RAISE(ABORT, 'customer {cid} is blocked here'); END"
            )

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()
