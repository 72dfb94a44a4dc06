"""queuestream: a sync database's queue snapshot as Avro change events on Kafka."""

from __future__ import annotations

__version__ = "0.9.16"

__all__ = ["__version__"]
