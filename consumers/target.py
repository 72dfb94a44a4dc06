"""What a target is: the interface the consumer runtime applies batches through.

A target turns change events into rows of its own schema. The runtime hands it
one batch at a time (the changes of one or more refreshes that this instance
owns, table by table in foreign-key order) inside an open database transaction,
and commits the batch together with the consumed offsets. A target therefore
never commits, never talks to Kafka and never retries: it maps, validates and
writes, and says what it did in an :class:`ApplyReport`.

What the sample targets build on lives beside this module:
:mod:`consumers.target_rows` (checking and mapping changes into rows, a
RecordError naming table, key and column for a bad one) and
:mod:`consumers.target_sql` (exact money, versioned upserts and deletes, key
filters). :mod:`consumers.reconcile` holds what ``queuestream verify`` compares.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from consumers.changes import Change
from consumers.reconcile import TableImage
from queuestream.errors import RecordError

__all__ = ["ApplyReport", "Rejected", "Target"]

_SHOWN = 20  # keys named in a notice's log line


@dataclass(slots=True)
class Rejected:
    """A change the target could not apply, and why."""

    change: Change
    error: RecordError


@dataclass
class ApplyReport:
    """What a target did with one batch: counted by the runtime into the sync log."""

    applied: Counter[str] = field(default_factory=Counter)  # "<table>.<op>" -> rows changed
    stale: Counter[str] = field(default_factory=Counter)  # "<table>" -> events that changed nothing
    rejected: list[Rejected] = field(default_factory=list)
    #: "<target table>.<notice>" -> rows: what the target kept instead of guessing, for
    #: an operator to look at (a customer deleted while its orders remain, a shipped
    #: shipment whose order was deleted). Logged by the target, counted in the sync log.
    notices: Counter[str] = field(default_factory=Counter)

    def reject(self, change: Change, error: RecordError) -> None:
        self.rejected.append(Rejected(change, error))

    def notice(self, name: str, keys: Iterable[Any], logger: logging.Logger, what: str) -> None:
        """Count ``keys`` under the notice ``name``; one warning: ``what``, then the keys.

        ``what`` reads on with the number of keys (``"orders deleted ... had shipped"``).
        """
        found = sorted(keys)
        if not found:
            return
        self.notices[name] += len(found)
        shown = ", ".join(map(str, found[:_SHOWN])) + (" ..." if len(found) > _SHOWN else "")
        logger.warning("%d %s: %s", len(found), what, shown)

    @property
    def rows(self) -> int:
        return sum(self.applied.values())


class Target(ABC):
    """A sample target. Subclasses set ``name``, ``tables``, ``metadata`` and apply."""

    #: "accounting" or "shipping": the command argument and the default group suffix.
    name: ClassVar[str]
    #: The source tables (contract names) this target consumes, in apply order.
    tables: ClassVar[tuple[str, ...]]
    #: The target's own tables.
    metadata: ClassVar[sa.MetaData]
    #: The source columns :meth:`apply` reads of each table's rows (``Change.row``), by
    #: table: the consumer decodes only these, the key and ModifiedDate, and skips the
    #: rest of each event. None (the default), or a table left out: whole rows.
    reads: ClassVar[Mapping[str, tuple[str, ...]] | None] = None

    def create_schema(self, connection: sa.Connection) -> None:
        """Create the target's tables and views where missing (idempotent)."""
        self.metadata.create_all(connection)

    @abstractmethod
    def apply(
        self,
        connection: sa.Connection,
        changes: Mapping[str, Sequence[Change]],
        report: ApplyReport,
    ) -> None:
        """Apply one batch. ``changes`` maps each of ``tables`` to its changes in order.

        Raise nothing for a bad record: ``report.reject`` it (the runtime sends it to
        the dead-letter topic within the error budget). Database errors propagate.
        """

    def before_commit(self, connection: sa.Connection) -> None:
        """Called once per target transaction, after its last :meth:`apply` and before
        its offsets and sync log are written: what must see the whole transaction (a
        lock wanted only until the commit). Nothing by default."""
        return

    # -- reconciliation (queuestream verify) ---------------------------------------
    @abstractmethod
    def expected(self, source: sa.Connection, zone: ZoneInfo) -> dict[str, TableImage]:
        """What this target should hold, computed straight from the source tables.

        ``zone`` is the source's time zone (its timestamps are naive local time).
        Keys are this target's table names; see :mod:`consumers.reconcile`.
        """

    @abstractmethod
    def actual(self, target: sa.Connection) -> dict[str, TableImage]:
        """What this target holds, in the same shape as :meth:`expected`."""
