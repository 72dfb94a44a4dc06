"""The producer: reads the sync database's changes and publishes them to Kafka.

Modules: ``source_models`` (the sync database), ``simulator`` (activity),
``source_reader`` (safe bound and frozen snapshot), ``watermark`` (windows and
overlap), ``events`` (Debezium-shaped envelopes), ``partitioning`` (murmur2 by
CustomerID), ``sensitive`` (exclude/mask/hash), ``progress`` (watermark read
back from Kafka), ``publisher`` (Kafka transactions), ``refresh`` (the cycle).
"""

from __future__ import annotations

__all__: list[str] = []
