"""One exception tree for queuestream, grouped by what the caller should do.

::

    QueuestreamError                 root: the CLI prints "Type: message" and exits 1
    ├── ConfigurationError           fix a setting or a flag, then run again
    │   └── SourceSchemaError        the sync database lacks a table or column the refresh reads
    ├── SchemaError                  the Avro contract and the data model disagree
    ├── RecordError                  one row or event cannot be handled; names table, key, column
    │   ├── EncodingError            producer: a value cannot be encoded (the refresh fails)
    │   └── DecodeError              consumer: bytes cannot be decoded (keeps the raw message)
    ├── RetriableError               a dependency is unavailable; the same call may succeed later
    │   ├── BrokerUnavailableError   Kafka cannot be reached or did not acknowledge
    │   │   └── CommitOutcomeUnknownError  a commit was not confirmed either way: restart
    │   │                                  the producer, which reads back what committed
    │   └── DatabaseUnavailableError the source or target database cannot be reached
    └── FatalError                   stop: continuing could lose or duplicate data
        └── FencedError              another producer with the same transactional id took over
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerUnavailableError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DecodeError",
    "EncodingError",
    "FatalError",
    "FencedError",
    "QueuestreamError",
    "RecordError",
    "RetriableError",
    "SchemaError",
    "SourceSchemaError",
]


class QueuestreamError(Exception):
    """Root of every error queuestream raises on purpose."""


class ConfigurationError(QueuestreamError):
    """A setting is missing or invalid; the message says which and what to do."""


class SourceSchemaError(ConfigurationError):
    """The sync database lacks a table or a column that the refresh reads."""


class SchemaError(QueuestreamError):
    """The Avro schemas in schemas/avro/ do not fit the data they must carry."""


class RecordError(QueuestreamError):
    """One record cannot be handled. Carries the table, the key and the column."""

    def __init__(
        self,
        reason: str,
        *,
        table: str,
        key: Any = None,
        column: str | None = None,
    ) -> None:
        self.reason = reason
        self.table = table
        self.key = key
        self.column = column
        where = f"table {table}"
        if key is not None:
            where += f", key {key}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {reason}")


class EncodingError(RecordError):
    """A source value cannot be encoded with its Avro schema."""


class DecodeError(RecordError):
    """A Kafka message cannot be decoded. ``raw`` keeps the bytes for a dead-letter topic."""

    def __init__(
        self,
        reason: str,
        *,
        table: str,
        raw: bytes | None,
        key: Any = None,
        column: str | None = None,
    ) -> None:
        self.raw = raw
        super().__init__(reason, table=table, key=key, column=column)


class RetriableError(QueuestreamError):
    """A dependency is unavailable for now; nothing was committed, try again later."""


class BrokerUnavailableError(RetriableError):
    """Kafka could not be reached, or did not acknowledge in time."""


class CommitOutcomeUnknownError(BrokerUnavailableError):
    """Kafka neither confirmed nor refused a commit. Retrying with the same producer
    could publish twice: a new producer settles the transaction (init_transactions)
    and reads the committed progress back."""


class DatabaseUnavailableError(RetriableError):
    """A database could not be reached."""


class FatalError(QueuestreamError):
    """Continuing could lose or duplicate data: stop and let an operator look."""


class FencedError(FatalError):
    """Another producer instance with the same transactional id is running."""
