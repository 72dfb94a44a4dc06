"""``queuestream sim``: realistic, reproducible activity in an Exigo-style sync database.

The :class:`Simulator` is the driver: it creates the simulated database's tables,
picks each next business action by weight (:data:`ACTIONS`), commits
``per_transaction`` actions at a time, keeps to a rate, and stops when asked.
What an action writes is :mod:`producer.sim_actions`; with ``deletes=True`` the
deletes of :mod:`producer.sim_deletes` join the draw, weighted low. Both draw from one seeded
generator in a fixed order, so the same seed on the same starting database makes
the same changes; timestamps are the clock's.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from producer.sim_actions import ACTIONS, SimulatedBusiness
from producer.sim_deletes import DELETE_ACTIONS
from queuestream.sync_schema import create_source_schema

__all__ = ["ACTIONS", "DELETE_ACTIONS", "SimStats", "Simulator"]

log = logging.getLogger(__name__)


@dataclass
class SimStats:
    actions: dict[str, int] = field(
        default_factory=lambda: {a: 0 for a in {**ACTIONS, **DELETE_ACTIONS}}
    )
    rows_written: int = 0

    @property
    def total(self) -> int:
        return sum(self.actions.values())

    @property
    def deletes(self) -> int:
        """Delete actions performed (each deletes one row or more)."""
        return sum(self.actions[a] for a in DELETE_ACTIONS)


class Simulator:
    """Writes business activity; ``per_transaction`` actions a source transaction.
    ``deletes``: the business deletes rows too (:mod:`producer.sim_deletes`); only a
    pipeline that sweeps converges on all of them. ``stride`` simulators may write one
    source at once, each with its own ``offset`` (:mod:`producer.sim_actions`)."""

    def __init__(
        self,
        engine: sa.Engine,
        zone: ZoneInfo,
        seed: int = 42,
        clock: Callable[[], datetime] | None = None,
        deletes: bool = False,
        stride: int = 1,
        offset: int = 0,
    ) -> None:
        self.engine = engine
        self.weights = {**ACTIONS, **(DELETE_ACTIONS if deletes else {})}
        self._names = list(self.weights)
        self._cumulative = list(itertools.accumulate(self.weights.values()))
        self.zone = zone
        self.rng = random.Random(seed)
        self._clock = clock or (lambda: datetime.now(zone).replace(tzinfo=None))
        self.stats = SimStats()
        create_source_schema(engine)
        with engine.connect() as conn:
            self.business = SimulatedBusiness(conn, self.rng, self._clock, stride, offset)

    def run(
        self,
        actions: int,
        rate: float | None = None,
        per_transaction: int = 1,
        stop: threading.Event | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> SimStats:
        """Perform ``actions`` actions, ``per_transaction`` a commit, ``rate`` a second at most."""
        if per_transaction < 1:  # no action a transaction: it would never get anywhere
            msg = f"per_transaction must be 1 or more, not {per_transaction}"
            raise ValueError(msg)
        started = time.monotonic()
        done = 0
        while done < actions and not (stop and stop.is_set()):
            chunk = min(per_transaction, actions - done)
            with self.engine.begin() as conn:
                for _ in range(chunk):
                    self.step(conn)
                self.business.flush(conn)
            done += chunk
            if on_progress:
                on_progress(chunk)
            if rate:
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    if stop:
                        stop.wait(ahead)
                    else:
                        time.sleep(ahead)
        return self.stats

    def step(self, conn: sa.Connection) -> str:
        """One action, chosen by weight (or what must come first), written through ``conn``
        or held until the business's ``flush`` (:mod:`producer.sim_actions`)."""
        # the same draw as choices(weights=...), which accumulates them on every call
        chosen = self.rng.choices(self._names, cum_weights=self._cumulative)[0]
        action = self.business.feasible(chosen, conn)
        self.stats.rows_written += self.business.perform(conn, action)
        self.stats.actions[action] += 1
        return action
