"""Consumed offsets kept in the target database (promise 3).

The offsets a target has applied live in the target, in ``queuestream_offsets``,
and change in the same database transaction as the rows. On partition assignment
a consumer resumes from there, not from the group offsets in Kafka (those are
committed afterwards, for lag tools, and may lag behind after a crash).

Everything the runtime does with them goes through one small interface,
:class:`OffsetStore` (the idea of Debezium's ``OffsetBackingStore``): ``load``
where to resume, ``lock`` the rows of a batch's partitions, ``save`` the next
offsets. Within a batch's transaction :meth:`OffsetStore.lock` takes the rows of
the batch's partitions (SELECT ... FOR UPDATE on PostgreSQL; SQLite writers are
serialised by BEGIN IMMEDIATE). Events below the stored offset were applied
already, by this instance before a crash or by another member of the group
before a rebalance: batch apply (:mod:`.batch_apply`) drops them. That makes two
members that briefly own the same partition safe: whichever commits second
applies only what is new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["OFFSETS", "OffsetStore", "TopicPartition", "create", "stored_offsets"]

TopicPartition = tuple[str, int]

_metadata = sa.MetaData()

OFFSETS = sa.Table(
    "queuestream_offsets",
    _metadata,
    sa.Column("target", sa.String(50), primary_key=True, comment="accounting or shipping"),
    sa.Column("topic", sa.String(249), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column(
        "next_offset",
        sa.BigInteger,
        nullable=False,
        comment="the offset of the next event to apply (last applied + 1)",
    ),
    sa.Column("consumer_group", sa.String(255), nullable=False, comment="who applied last"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    comment="Offsets applied to this target; committed with the rows they produced.",
)


def create(connection: sa.Connection) -> None:
    _metadata.create_all(connection)


def stored_offsets(connection: sa.Connection, target: str) -> dict[TopicPartition, int]:
    """Every stored next offset of ``target``."""
    rows = connection.execute(
        sa.select(OFFSETS.c.topic, OFFSETS.c.partition, OFFSETS.c.next_offset).where(
            OFFSETS.c.target == target
        )
    )
    return {(t, p): o for t, p, o in rows}


@dataclass(frozen=True, slots=True)
class OffsetStore:
    """The offsets ``group`` applies to ``target``.

    Every method works inside the caller's transaction (the connection it is given),
    so the offsets commit or roll back with the rows they were applied with.
    """

    target: str
    group: str

    def load(
        self, connection: sa.Connection, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Stored next offsets of ``partitions`` (those never applied are absent)."""
        wanted = set(partitions)
        if not wanted:
            return {}
        topics = {t for t, _ in wanted}
        rows = connection.execute(
            sa.select(OFFSETS.c.topic, OFFSETS.c.partition, OFFSETS.c.next_offset).where(
                OFFSETS.c.target == self.target, OFFSETS.c.topic.in_(topics)
            )
        )
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    def lock(
        self, connection: sa.Connection, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Lock the offset rows of ``partitions`` for this transaction and return them.

        Rows missing are inserted first (next offset 0, "nothing applied") with ON
        CONFLICT DO NOTHING, so two members that both see a partition for the first
        time queue on the same row instead of one failing on the primary key.
        """
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        now = datetime.now(UTC)
        insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(
            OFFSETS
        )
        connection.execute(
            insert.on_conflict_do_nothing(),
            [
                {
                    "target": self.target,
                    "topic": topic,
                    "partition": partition,
                    "next_offset": 0,
                    "consumer_group": self.group,
                    "updated_at": now,
                }
                for topic, partition in wanted
            ],
        )
        query = sa.select(OFFSETS.c.topic, OFFSETS.c.partition, OFFSETS.c.next_offset).where(
            OFFSETS.c.target == self.target,
            sa.tuple_(OFFSETS.c.topic, OFFSETS.c.partition).in_(wanted),
        )
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        return {(t, p): o for t, p, o in connection.execute(query)}

    def save(
        self,
        connection: sa.Connection,
        offsets: Mapping[TopicPartition, int],
        before: Mapping[TopicPartition, int],
    ) -> None:
        """Store ``offsets`` (next offsets) where they move forward from ``before``.

        The rows exist and are locked: :meth:`lock` came first in this transaction.
        """
        moved = [
            {"row_topic": topic, "row_partition": partition, "row_offset": offset}
            for (topic, partition), offset in offsets.items()
            if offset > before.get((topic, partition), 0)
        ]
        if not moved:
            return
        # One statement for every partition (an executemany: psycopg sends them at once).
        update = (
            sa.update(OFFSETS)
            .where(
                OFFSETS.c.target == self.target,
                OFFSETS.c.topic == sa.bindparam("row_topic"),
                OFFSETS.c.partition == sa.bindparam("row_partition"),
            )
            .values(
                next_offset=sa.bindparam("row_offset"),
                consumer_group=self.group,
                updated_at=datetime.now(UTC),
            )
        )
        connection.execute(update, moved)
