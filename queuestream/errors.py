"""One exception tree for queuestream, grouped by what the caller should do.

::

    QueuestreamError                 root: the CLI prints "Type: message" and exits 1
    ├── ConfigurationError           fix a setting or a flag, then run again (never retried)
    │   ├── SettingsFileError        the TOML settings file cannot be read (names line, column)
    │   ├── SourceSchemaError        the sync database lacks a table or column the refresh reads
    │   ├── DatabaseAccessError      a database refuses us for good: wrong password, database or
    │   │                            table missing, permission denied, a path that cannot open
    │   └── BrokerAccessError        Kafka refuses us for good: authentication, ACLs, TLS
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

Whether a failed database or Kafka call is a RetriableError or a ConfigurationError is
decided in one place, :mod:`queuestream.failures`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerAccessError",
    "BrokerUnavailableError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "DatabaseAccessError",
    "DatabaseUnavailableError",
    "DecodeError",
    "EncodingError",
    "FatalError",
    "FencedError",
    "QueuestreamError",
    "RecordError",
    "RetriableError",
    "SchemaError",
    "SettingsFileError",
    "SourceSchemaError",
]


class QueuestreamError(Exception):
    """Root of every error queuestream raises on purpose."""


class ConfigurationError(QueuestreamError):
    """A setting is missing or invalid; the message says which and what to do."""


class SettingsFileError(ConfigurationError):
    """The TOML settings file is malformed; the message names the file, line and column."""


class DatabaseAccessError(ConfigurationError):
    """A database refuses this configuration for good (see :mod:`queuestream.failures`):
    retrying cannot help, fixing the URL, the password, the grants or the path can."""


class BrokerAccessError(ConfigurationError):
    """Kafka refuses this configuration for good: authentication, authorization or TLS."""


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
    """A dependency is unavailable for now; nothing was committed, try again later.

    ``advice`` is what an operator should do when a command stops on it ("retry in a
    moment"), shown after the situation. A command that retries by itself logs the
    situation alone (:attr:`situation`), with when it tries again.
    """

    def __init__(self, situation: str, *, advice: str | None = None) -> None:
        super().__init__(situation if advice is None else f"{situation}: {advice}")
        self.situation = situation


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
