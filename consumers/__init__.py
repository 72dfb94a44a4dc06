"""Consumers: the runtime shared by every target, and the sample targets (to come)."""

from __future__ import annotations

__all__: list[str] = []
