"""The producer: reads the sync database's changes and publishes them to Kafka.

Modules: ``source_reader`` (read-only access: the tables it needs, the safe bound
and the frozen snapshot), ``watermark`` (windows and overlap), ``events``
(Debezium-shaped envelopes), ``partitioning`` (murmur2 by CustomerID),
``sensitive`` (exclude/mask/hash), ``progress`` (the watermark read back from the
last committed END marker), ``publisher`` (Kafka transactions), ``refresh`` (the
cycle), ``produce_loop`` (``queuestream produce``), ``metrics`` (Prometheus), ``queue_procedure``
(procedure mode's simulated ``queue.Refresh``), ``simulator`` and ``sim_actions``
(``queuestream sim``: the only code that writes a sync database). The sync
database's tables are described in :mod:`queuestream.sync_schema`.
"""

from __future__ import annotations

__all__: list[str] = []
