"""Batch ids: sortable and unique, e.g. ``20261123T101500123456Z-3f9a1c2b``.

A refresh and a sweep batch both take one (the BEGIN and END markers, the events'
``source.refresh_id`` and ``transaction.id``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

__all__ = ["new_refresh_id"]


def new_refresh_id() -> str:
    """Sortable and unique: ``20261123T101500123456Z-3f9a1c2b``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
