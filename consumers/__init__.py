"""Consumers: the runtime shared by every target, and the sample targets.

The runtime: ``runtime`` (the loop of a consumer group member), ``intake``
(decoding what Kafka hands over), ``ownership`` (partitions owned, resumed from the
target's offsets, rebalancing), ``assembly`` and ``markers`` (batch-consistent
apply: whole refreshes by their END markers), ``batch_apply`` (promise 3: rows and
offsets in one target transaction), ``offsets`` (offsets kept in the target),
``target_db`` (the target database's outages), ``sync_log``, ``dead_letters``
(dead-letter topics and the error budget), ``metrics`` (Prometheus).

Targets: ``target`` (what a target implements), ``target_rows`` (record checks
that name table, key and column), ``target_sql`` (versioned upserts, exact money,
key filters; ``target_stage``: PostgreSQL's COPY and merge), ``target_write`` (one
table's checked changes written and counted), ``reconcile`` and ``verify``
(``queuestream verify``), and the sample targets ``accounting/`` and ``shipping/``.

Recovery: ``replay`` with ``replay_inputs`` and ``replay_plan`` (move a group to a
time or offsets), ``rebuild`` (a target as of a point in time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from queuestream.errors import ConfigurationError

if TYPE_CHECKING:
    from consumers.target import Target

__all__ = ["TARGET_NAMES", "target_named"]

TARGET_NAMES = ("accounting", "shipping")


def target_named(name: str) -> Target:
    """The sample target called ``name``."""
    if name == "accounting":
        from consumers.accounting import AccountingTarget

        return AccountingTarget()
    if name == "shipping":
        from consumers.shipping import ShippingTarget

        return ShippingTarget()
    msg = f"unknown target {name!r}: use one of {', '.join(TARGET_NAMES)}"
    raise ConfigurationError(msg)
