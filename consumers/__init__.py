"""Consumers: the runtime shared by every target, and the sample targets.

``runtime`` (the consumer group member), ``assembly`` (batch-consistent apply),
``markers`` (END markers), ``offsets`` (offsets kept in the target), ``sync_log``,
``dead_letters`` (dead-letter topics and the error budget), ``target`` (what a
target implements), ``reconcile`` (``queuestream verify``), ``replay`` (move a
group to a time or offsets), ``rebuild`` (a target as of a point in time), and the sample targets
``accounting/`` and ``shipping/``.
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
