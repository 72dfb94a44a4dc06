"""A refresh the database refuses as a whole is applied event by event: only culprits fail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.batch_apply import apply_refresh
from consumers.changes import Change
from consumers.reconcile import TableImage
from consumers.target import ApplyReport, Target
from consumers.target_sql import upsert_versioned
from queuestream.databases import create_engine
from tests.source_changes import change

_metadata = sa.MetaData()
_PAID = sa.Table(
    "paid",
    _metadata,
    sa.Column("payment_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("amount", sa.Integer, sa.CheckConstraint("amount >= 0"), nullable=False),
    sa.Column("source_version", sa.BigInteger, nullable=False),
)


class _Strict(Target):
    """Leaves validation to a CHECK constraint, so the database refuses the batch."""

    name = "strict"
    tables = ("payments",)
    metadata = _metadata

    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        rows = [
            {
                "payment_id": c.key["PaymentID"],
                "amount": c.row["Amount"],
                "source_version": c.version,
            }
            for c in changes["payments"]
            if c.row is not None
        ]
        report.applied["paid.u"] += len(upsert_versioned(connection, _PAID, rows, ["payment_id"]))

    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        return {}

    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        return {}


def test_one_refused_event_does_not_refuse_its_refresh(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'strict.db'}"
    engine = create_engine(url, writer=True)
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    changes = [
        change("payments", {"PaymentID": i, "Amount": amount, "ModifiedDate": stamp})
        for i, amount in enumerate([5, -1, 7])
    ]
    with engine.begin() as conn:
        _metadata.create_all(conn)
        report = apply_refresh(conn, _Strict(), {"payments": changes})

    assert report.applied["paid.u"] == 2
    (refused,) = report.rejected
    assert refused.change.key == {"PaymentID": 1}
    assert refused.error.table == "payments"
    assert "CHECK constraint failed" in refused.error.reason
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(_PAID.c.payment_id, _PAID.c.amount))) == [
            (0, 5),
            (2, 7),
        ]
    engine.dispose()
