"""The sync log: one row per applied batch in every target (the seeds' analytical log).

A row says which refresh was applied, by which group, how many rows per table
and op changed (``counts``; beside them the notices a target raised, such as
``ledger_accounts.deleted_with_orders``: rows it kept for an operator to look at
rather than guess), how many events were stale (changed nothing), how many failed
and went to the dead-letter topic, how long it took, and which offsets it
covered. It is written in the same transaction as the rows it describes, so the
log never claims more than the target holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

__all__ = ["SYNC_LOG", "UNDECODABLE", "SyncEntry", "create", "read", "write"]

#: The refresh id of an entry for undecodable events alone, outside any refresh.
UNDECODABLE = "-"

_metadata = sa.MetaData()

SYNC_LOG = sa.Table(
    "queuestream_sync_log",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(50), nullable=False),
    sa.Column("consumer_group", sa.String(255), nullable=False),
    sa.Column("member", sa.String(255), nullable=False, comment="host:pid of the consumer"),
    sa.Column(
        "refresh_id",
        sa.String(100),
        nullable=False,
        comment="the producer's refresh; '-' for undecodable events outside any refresh",
    ),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column(
        "rows_applied", sa.Integer, nullable=False, comment="rows inserted, updated or deleted"
    ),
    sa.Column("events_stale", sa.Integer, nullable=False, comment="events that changed nothing"),
    sa.Column("errors", sa.Integer, nullable=False, comment="events sent to a dead-letter topic"),
    sa.Column(
        "counts",
        sa.Text,
        nullable=False,
        comment='JSON {"<table>.<op>": rows changed, "<table>.<notice>": rows to look at}',
    ),
    sa.Column(
        "offsets",
        sa.Text,
        nullable=False,
        comment='JSON {"<topic>": {"<partition>": [first, last]}}',
    ),
    comment="One row per refresh applied to this target.",
)


@dataclass
class SyncEntry:
    refresh_id: str
    rows_applied: int = 0
    events_stale: int = 0
    errors: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    duration_ms: int = 0

    @property
    def is_refresh(self) -> bool:
        """False for an entry of undecodable events alone (refresh ``-``)."""
        return self.refresh_id != UNDECODABLE

    def heading(self) -> str:
        """What the entry is about, to start the line that reports it."""
        if self.is_refresh:
            return f"refresh {self.refresh_id}"
        s = "" if self.errors == 1 else "s"
        return f"{self.errors} undecodable event{s} outside any refresh (dead letter{s})"

    def summary(self) -> str:
        return f"synchronized {self.rows_applied} rows, {self.errors} errors"


def create(connection: sa.Connection) -> None:
    _metadata.create_all(connection)


def write(
    connection: sa.Connection, target: str, group: str, member: str, entries: list[SyncEntry]
) -> None:
    now = datetime.now(UTC)
    connection.execute(
        sa.insert(SYNC_LOG),
        [
            {
                "target": target,
                "consumer_group": group,
                "member": member,
                "refresh_id": e.refresh_id,
                "applied_at": now,
                "duration_ms": e.duration_ms,
                "rows_applied": e.rows_applied,
                "events_stale": e.events_stale,
                "errors": e.errors,
                "counts": json.dumps(e.counts, sort_keys=True),
                "offsets": json.dumps(e.offsets, sort_keys=True),
            }
            for e in entries
        ],
    )


def read(connection: sa.Connection, target: str) -> list[dict[str, Any]]:
    """The log of ``target``, oldest first, with the JSON columns decoded."""
    rows = connection.execute(
        sa.select(SYNC_LOG).where(SYNC_LOG.c.target == target).order_by(SYNC_LOG.c.id)
    )
    found = []
    for row in rows:
        entry: dict[str, Any] = dict(row._mapping)
        entry["counts"] = json.loads(entry["counts"])
        entry["offsets"] = json.loads(entry["offsets"])
        found.append(entry)
    return found
