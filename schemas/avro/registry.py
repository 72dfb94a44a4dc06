"""What queuestream asks of a Confluent-compatible schema registry, and how it fails.

:class:`SchemaRegistry` wraps confluent-kafka's client (or a stand-in with its methods):

* :meth:`~SchemaRegistry.register` sets the subject's compatibility to BACKWARD first
  (``PUT /config/<subject>``, unless its level includes BACKWARD already), so that the
  registry refuses a schema that cannot read the subject's last one, then registers
  the schema. Apicurio Registry 2.4.2 may refuse one of several registrations made at
  once (HTTP 409 "artifact ... already exists" for the very subject being created,
  14 of 80 when tried): the artifact is there by then, and asking again returns its id;
* :meth:`~SchemaRegistry.schema_text` is a writer schema by its id.

A registry that does not answer (down, or a request that outlasts
:data:`REGISTRY_TIMEOUT`) raises a RetriableError, which ``produce`` waits out like
any outage; one that answers but not as a registry (404, an HTML page) or refuses
the credentials raises a ConfigurationError: both decided by
:func:`queuestream.failures.registry_failure`, named by the URL without its password.
The HTTP client logs every request's URL at INFO, with the password the URL may
carry: a filter on its logger masks it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import ArgumentError

from queuestream.databases import describe_url
from queuestream.errors import ConfigurationError
from queuestream.failures import hide_logins, registry_failure

__all__ = ["REGISTRY_TIMEOUT", "SchemaRegistry"]

log = logging.getLogger(__name__)

#: Seconds a registry request may take (the client's default is to wait forever).
REGISTRY_TIMEOUT = 10.0
#: Registrations of one schema when the registry reports a race (see the module docstring).
_REGISTER_ATTEMPTS = 3
#: Compatibility levels under which a registry refuses what new readers cannot read.
_INCLUDES_BACKWARD = frozenset({"BACKWARD", "BACKWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"})
#: The login part of a URL (``scheme://user:password@``, or without the scheme).
_LOGIN = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^/@]*@", re.IGNORECASE)
#: The loggers of the HTTP clients the registry client may use (httpx2, or httpx).
_HTTP_LOGGERS = ("httpx2", "httpx")


class SchemaRegistry:
    """A registry ``client`` at ``url`` (named without its password in every message)."""

    def __init__(self, client: Any, url: str = "") -> None:
        self.client = client
        self.where = _masked(url) if url else "(configured)"

    @classmethod
    def connect(cls, url: str) -> SchemaRegistry:
        """confluent-kafka's client of the registry at ``url``; its request log masked."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(_HIDE_LOGINS)
        try:
            client = SchemaRegistryClient({"url": url, "timeout": REGISTRY_TIMEOUT})
        except ValueError:  # the client's reason repeats the URL, password and all
            msg = (
                f"schema_registry_url {_masked(url)} is not a registry URL: give "
                "http://host:port or https://host:port (user:password@host for basic auth)"
            )
            raise ConfigurationError(msg) from None
        return cls(client, url)

    def register(self, subject: str, schema: Any) -> int:
        """The id of ``schema`` (a confluent-kafka Schema) under ``subject``, registered
        with the subject's compatibility at BACKWARD at least."""
        self._require_backward(subject)
        return int(self._call(lambda: self._register(subject, schema)))

    def schema_text(self, schema_id: int) -> str:
        """The JSON of the schema of id ``schema_id``."""
        return str(self._call(lambda: self.client.get_schema(schema_id)).schema_str)

    def _call(self, call: Callable[[], Any]) -> Any:
        """``call()`` to the registry, its failures classified (see the module docstring)."""
        try:
            return call()
        except Exception as exc:
            failure = registry_failure(exc, self.where)
            if failure is None:
                raise
            raise failure from None

    def _register(self, subject: str, schema: Any) -> Any:
        """Register, asking again when the registry reports a race (see the module docstring);
        a 409 for any other reason (an incompatible schema) is not asked again."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        for _ in range(_REGISTER_ATTEMPTS - 1):
            try:
                return self.client.register_schema(subject, schema)
            except SchemaRegistryError as exc:
                if not (exc.http_status_code == 409 and "already exists" in exc.error_message):
                    raise
                log.info("schema registry: %s raced another registration; asking again", subject)
        return self.client.register_schema(subject, schema)

    def _require_backward(self, subject: str) -> None:
        """Have the registry check each new schema of ``subject`` against the last one.

        A subject whose compatibility level already includes BACKWARD (BACKWARD, FULL,
        or their _TRANSITIVE forms) keeps it; any other (none of its own, the registry's
        default NONE, FORWARD) is set to BACKWARD, so that a schema that consumers on it
        could not use to read the events already written is refused (HTTP 409: a
        SchemaError).
        """
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            level = self._call(lambda: self.client.get_compatibility(subject))
        except SchemaRegistryError as exc:  # the registry's own 404: no subject, or no level
            if exc.http_status_code != 404:
                raise
            level = None
        if level in _INCLUDES_BACKWARD:
            return
        self._call(lambda: self.client.set_compatibility(subject, "BACKWARD"))
        log.info("schema registry: compatibility of %s set to BACKWARD (was %s)", subject, level)


class _HideLogins(logging.Filter):
    """The HTTP client logs each request's URL, password included: masked here."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = hide_logins(text)
        if masked != text:
            record.msg, record.args = masked, None
        return True


_HIDE_LOGINS = _HideLogins()


def _masked(url: str) -> str:
    """``url`` without its password, as every message names a URL."""
    try:
        return describe_url(url)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy parses: mask what may be a login
        return _LOGIN.sub(r"\1***@", url)
