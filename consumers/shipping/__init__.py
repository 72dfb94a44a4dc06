"""The shipping sample target: shipments, with their lines, of the orders that can ship."""

from __future__ import annotations

from consumers.shipping.target import ShippingTarget

__all__ = ["ShippingTarget"]
