"""Counting the committed messages between two offsets, as a member would be given them.

Events are produced in Kafka transactions, so offsets are not messages: every
partition a refresh wrote ends with a commit marker, and aborted messages take
offsets too. "How many events lie between offset A and offset B" is therefore
answered by reading, with read_committed, from A up to B: the monitor counts a
group's lag this way (``queuestream/monitor/lag.py``), and replay counts the
events a forward move would skip (``consumers/replay_plan.py``).

Up to ``COUNT_LIMIT`` messages per partition are counted one by one; beyond that,
or past the time budget, the rest is estimated from offsets and the figure is
marked as not exact. The first message found (offset and timestamp) tells how old
the oldest unread event is.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from queuestream.kafka_clients import assign_at_once, consume_arrived, consumer_config
from queuestream.settings import Settings

__all__ = ["COUNT_LIMIT", "MessageCounter", "Range", "Unconsumed", "UnconsumedTally"]

log = logging.getLogger(__name__)

#: Messages counted one by one per partition; more are estimated from offsets.
COUNT_LIMIT = 100_000
_BUDGET_SECONDS = 10.0  # for one count() call
_ROUND_MIN_SECONDS = 2.0

Range = tuple[str, int, int]  # (topic, partition, start offset); counted up to an end offset


@dataclass(frozen=True, slots=True)
class Unconsumed:
    """What a read_committed reader found from a start offset on."""

    count: int  # messages (exact, or estimated when ``exact`` is False)
    first_offset: int | None = None
    first_ms: int | None = None  # timestamp of the first message found
    exact: bool = True


class UnconsumedTally:
    """Counts the messages a reader gets on one partition from ``start`` to ``stable_end``."""

    def __init__(self, start: int, stable_end: int, limit: int = COUNT_LIMIT) -> None:
        self.start = start
        self.stable_end = stable_end
        self.limit = limit
        self.count = 0
        self.next_offset = start
        self.first: tuple[int, int] | None = None  # (offset, timestamp ms)
        self.done = start >= stable_end
        self._exact = True

    def add(self, offset: int, timestamp_ms: int) -> None:
        """A message the reader got (offsets past the stable end came later: not counted)."""
        if self.done:
            return
        if offset >= self.stable_end:
            self.done = True
            return
        if self.first is None:
            self.first = (offset, timestamp_ms)
        self.count += 1
        self.next_offset = offset + 1
        if self.count >= self.limit and self.next_offset < self.stable_end:
            self.done, self._exact = True, False

    def at_end(self) -> None:
        """The reader reached the end of what is committed on the partition."""
        if not self.done:
            self.done = True
            self.next_offset = max(self.next_offset, self.stable_end)

    def result(self) -> Unconsumed:
        exact = self._exact and self.done
        count = self.count if exact else self.count + max(0, self.stable_end - self.next_offset)
        first_offset, first_ms = self.first if self.first is not None else (None, None)
        if not exact and first_offset is None and count:
            first_offset = self.next_offset
        return Unconsumed(count, first_offset, first_ms, exact)


class MessageCounter:
    """A read_committed reader (no group, never committing) that counts ranges of offsets."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._reader = Consumer(
            consumer_config(
                settings,
                f"{name}-{uuid.uuid4().hex}",
                # the end of a partition is reported at once rather than after a long poll
                **{"enable.partition.eof": True, "fetch.wait.max.ms": 50},
            )
        )

    def close(self) -> None:
        self._reader.close()

    def count(
        self, wanted: dict[Range, int], budget: float = _BUDGET_SECONDS
    ) -> dict[Range, Unconsumed]:
        """Read from each (topic, partition, start) to its end offset with read_committed.

        One partition can be wanted from several starts (one per group): each round
        reads every partition from at most one of them.
        """
        rounds: list[dict[tuple[str, int], UnconsumedTally]] = []
        found: dict[Range, Unconsumed] = {}
        for (topic, partition, start), stable_end in sorted(wanted.items()):
            if start >= stable_end:
                found[(topic, partition, start)] = Unconsumed(0)
                continue
            for tallies in rounds:
                if (topic, partition) not in tallies:
                    tallies[(topic, partition)] = UnconsumedTally(start, stable_end)
                    break
            else:
                rounds.append({(topic, partition): UnconsumedTally(start, stable_end)})
        # Each round (a partition is read once per round) gets its share of the budget,
        # at least _ROUND_MIN_SECONDS: enough to reach every first message, which tells
        # whether anything is there at all and how old it is.
        share = max(_ROUND_MIN_SECONDS, budget / max(1, len(rounds)))
        for tallies in rounds:
            self._read_round(tallies, time.monotonic() + share)
            for (topic, partition), tally in tallies.items():
                found[(topic, partition, tally.start)] = tally.result()
        return found

    def _read_round(self, tallies: dict[tuple[str, int], UnconsumedTally], deadline: float) -> None:
        reader = self._reader
        assign_at_once(
            reader, [TopicPartition(t, p, tally.start) for (t, p), tally in tallies.items()]
        )
        pending = set(tallies)
        try:
            while pending and time.monotonic() < deadline:
                wait = max(0.0, min(0.5, deadline - time.monotonic()))
                for message in consume_arrived(reader, 10_000, wait):
                    key = (message.topic() or "", message.partition() or 0)
                    tally = tallies.get(key)
                    if tally is None or tally.done:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            tally.at_end()
                        else:
                            log.warning("reading %s[%d]: %s", key[0], key[1], error.str())
                    else:
                        tally.add(message.offset() or 0, message.timestamp()[1])
                    if tally.done:
                        pending.discard(key)
                        reader.pause([TopicPartition(*key)])
            if pending:
                log.warning(
                    "%d partitions not read to their end in time: their counts are estimated",
                    len(pending),
                )
        finally:
            # A paused partition would stay paused when it is assigned again.
            reader.resume([TopicPartition(t, p) for t, p in tallies])
            reader.unassign()
