"""One validated settings object per process.

Every setting has a default (a constant below), can be overridden from the
environment as ``QUEUESTREAM_<NAME>`` (``KAFKA_BOOTSTRAP_SERVERS`` and
``SCHEMA_REGISTRY_URL`` are read too), from a TOML file named by ``--config``
or ``QUEUESTREAM_CONFIG``, and from command-line flags, which win.

Kafka client options pass through untouched as librdkafka keys:
``kafka = {"linger.ms" = "20"}`` in the file, or
``QUEUESTREAM_KAFKA='{"linger.ms": "20"}'`` in the environment.

Secrets can also come from files, as container secrets are mounted:
``kafka_secret_files`` maps a librdkafka key (``sasl.password``) to a file whose
content is the value, and ``source_password_file`` / ``target_password_file`` hold
the password of the source and target URLs. Files are read once, when the
settings are built; a missing or empty one is a ConfigurationError naming the
setting and the path, never the content. The settings' repr shows neither those
values nor the passwords in URLs or in ``kafka`` (:mod:`queuestream.secrets`).

The module is over 400 lines because it is the one list of every setting,
each with its default, validation and description: it reads better whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from queuestream.databases import check_url, postgresql_scheme
from queuestream.errors import ConfigurationError, SettingsFileError
from queuestream.retry import Backoff
from queuestream.secrets import hide_secrets, read_secret, with_password
from queuestream.sqlserver import (
    SQLSERVER_ZONE_REQUIRED,
    check_sqlserver_url,
    is_sqlserver_url,
    sqlserver_defaults,
)

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "DEFAULT_SENSITIVE_COLUMNS",
    "DEFAULT_SOURCE_URL",
    "ColumnAction",
    "Settings",
    "load_settings",
]

log = logging.getLogger(__name__)

DEFAULT_SOURCE_URL = "sqlite:///var/exigo-sync.db"
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_BROKER_TIMEOUT_SECONDS = 15.0
DEFAULT_TOPIC_PREFIX = "exigo"
DEFAULT_PARTITIONS = 6
DEFAULT_FIRST_WINDOW_HOURS = 24.0
DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_PG_CLOCK_ALLOWANCE_SECONDS = 1.0
DEFAULT_OVERLAP_SECONDS = 2.0
DEFAULT_REFRESH_STATEMENT = "EXEC queue.Refresh"
DEFAULT_REFRESH_SINCE_STATEMENT = "EXEC queue.Refresh :since"
DEFAULT_METRICS_HOST = "127.0.0.1"
#: Failover within 10 s of a consumer's death: the broker's smallest session by default
#: (group.min.session.timeout.ms), with heartbeats often enough that the survivors hear
#: of the rebalance a second after the session ends (README, "Consumer groups").
DEFAULT_SESSION_TIMEOUT_MS = 6000
DEFAULT_HEARTBEAT_INTERVAL_MS = 1000

#: One bootstrap server: [PROTOCOL://]HOST[:PORT], HOST a name, an IPv4 or a [IPv6] address,
#: PROTOCOL one of Kafka's listener protocols (librdkafka takes no other: http:// waited
#: for a broker that could never answer).
_BOOTSTRAP_SERVER = re.compile(
    r"((?i:plaintext|ssl|sasl_plaintext|sasl_ssl)://)?"
    r"(\[[0-9A-Fa-f:.]+\]|[^\s,/:\[\]]+)(:(?P<port>\d{1,5}))?"
)

ColumnAction = Literal["exclude", "mask", "hash"]

#: Payment account numbers never leave the source in clear unless configured otherwise.
DEFAULT_SENSITIVE_COLUMNS: dict[str, dict[str, ColumnAction]] = {
    "customer_accounts": {
        "PrimaryCreditCardNumberDisplay": "mask",
        "BankAccountNumber": "mask",
        "BankRoutingNumber": "mask",
    },
}


#: librdkafka keys that confluent-kafka itself reads, as Python objects: not settable here.
PYTHON_OBJECT_OPTIONS = frozenset(
    {
        "error_cb",
        "throttle_cb",
        "stats_cb",
        "oauth_cb",
        "logger",
        "on_delivery",
        "on_commit",
        "default.topic.config",
    }
)
#: librdkafka keys that confluent-kafka reads as a Python bool (a string fails there).
PYTHON_BOOL_OPTIONS = frozenset({"delivery.report.only.error"})


class Settings(BaseSettings):
    """Settings shared by every queuestream command."""

    model_config = SettingsConfigDict(
        env_prefix="QUEUESTREAM_",
        extra="forbid",
        validate_default=True,
    )

    # --- source ---------------------------------------------------------------
    source_url: str = Field(
        DEFAULT_SOURCE_URL,
        description="SQLAlchemy URL of the sync database (SQLite file, PostgreSQL, or "
        "SQL Server: mssql://, read through mssql-python).",
    )
    source_timezone: str = Field(
        "UTC",
        description="IANA time zone the source stamps CreatedDate/ModifiedDate in "
        "(Exigo stamps local time), e.g. America/Chicago; required for SQL Server.",
    )
    refresh_mode: Literal["watermark", "procedure"] = Field(
        "watermark",
        description="'watermark': queuestream freezes the changed rows itself; "
        "'procedure': run the source's own refresh statement and read its queue tables "
        "(the default for a SQL Server source).",
    )
    refresh_statement: str = Field(
        DEFAULT_REFRESH_STATEMENT,
        description="Procedure mode: the statement that fills the queue tables.",
    )
    refresh_since_statement: str = Field(
        DEFAULT_REFRESH_SINCE_STATEMENT,
        description="Procedure mode: the statement used with --since (bind :since).",
    )
    queue_schema: str = Field("queue", description="Procedure mode: schema of the queue tables.")
    first_window_hours: float = Field(
        DEFAULT_FIRST_WINDOW_HOURS, gt=0, description="The first refresh takes this many hours."
    )
    settle_seconds: float = Field(
        DEFAULT_SETTLE_SECONDS,
        ge=0,
        description="Where in-flight transactions cannot be seen (SQLite), the watermark "
        "stays this far behind the database clock.",
    )
    pg_clock_allowance_seconds: float = Field(
        DEFAULT_PG_CLOCK_ALLOWANCE_SECONDS,
        ge=0,
        description="PostgreSQL: margin for writers whose clock lags the server's.",
    )
    overlap_seconds: float = Field(
        DEFAULT_OVERLAP_SECONDS,
        ge=0,
        description="Each window re-reads this much before the watermark; rows already "
        "published are de-duplicated.",
    )

    # --- kafka ----------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        DEFAULT_BOOTSTRAP_SERVERS,
        # QUEUESTREAM_ first: names match the environment without case, so the field's
        # own name would take KAFKA_BOOTSTRAP_SERVERS before the more specific variable.
        validation_alias=AliasChoices(
            "QUEUESTREAM_KAFKA_BOOTSTRAP_SERVERS",
            "kafka_bootstrap_servers",
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        description="Kafka bootstrap servers.",
    )
    broker_timeout_seconds: float = Field(
        DEFAULT_BROKER_TIMEOUT_SECONDS,
        gt=0,
        description="How long the broker may take to answer a metadata request before "
        "the command stops with BrokerUnavailableError.",
    )
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka options, passed through untouched.",
    )
    kafka_secret_files: dict[str, Path] = Field(
        default_factory=dict,
        description="librdkafka key -> file holding its value (e.g. sasl.password -> "
        "/run/secrets/kafka-password); wins over the same key in kafka.",
    )
    topic_prefix: str = Field(DEFAULT_TOPIC_PREFIX, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, description="Partitions per change topic.")
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = Field(-1, description="Change topic retention; -1 keeps history.")
    transactional_id: str | None = Field(
        None, description="Producer transactional id (default: queuestream-<topic_prefix>)."
    )
    transaction_timeout_ms: int = Field(300_000, ge=1000)
    schema_registry_url: str | None = Field(
        None,
        validation_alias=AliasChoices(  # QUEUESTREAM_ first, as kafka_bootstrap_servers
            "QUEUESTREAM_SCHEMA_REGISTRY_URL", "schema_registry_url", "SCHEMA_REGISTRY_URL"
        ),
        description="Confluent-compatible schema registry; unset: Avro single-object encoding.",
    )
    schema_history_dir: Path | None = Field(
        None,
        description="Without a registry: a folder of released writer schemas "
        "(<stem>/<fingerprint>.avsc, a newer release's schemas/avro/history) with which a "
        "consumer reads the events of a producer on a newer contract than its own.",
    )
    publish_attempts: int = Field(
        3, ge=1, description="Attempts to publish one refresh before giving up."
    )
    reader_process: bool = Field(
        True,
        description="Read and encode a refresh's rows in a second process, beside "
        "publishing them (on a second core); false: all in the producer's own process.",
    )
    retry_backoff_seconds: float = Field(2.0, ge=0)
    state_dir: Path = Field(
        Path("var/state"),
        description="Where the producer caches what it published (rebuilt from the "
        "__queuestream-state.<prefix> topic when missing).",
    )
    sweep_chunk: int = Field(
        1000, ge=1, description="Rows the sweep reads and compares per step (and transaction)."
    )
    sweep_max_rows_per_second: float = Field(
        5000.0, gt=0, description="The sweep reads the source no faster than this."
    )

    # --- consumers --------------------------------------------------------------
    target_url: str | None = Field(
        None,
        description="SQLAlchemy URL of a consumer's target database "
        "(default: sqlite:///var/<target>.db).",
    )
    source_password_file: Path | None = Field(
        None, description="File holding the password of source_url (container secrets)."
    )
    target_password_file: Path | None = Field(
        None, description="File holding the password of target_url (container secrets)."
    )
    consumer_group: str | None = Field(
        None, description="Consumer group id (default: queuestream-<topic_prefix>-<target>)."
    )
    max_errors: int = Field(
        0,
        ge=0,
        description="Error budget: a consumer continues on the first N events that cannot be "
        "applied, produce on the first N rows that cannot be encoded (each goes to "
        "<topic>.dlq); past it a consumer stops, produce waits for the row to be fixed.",
    )
    idle_seconds: float = Field(
        3.0, gt=0, description="--until-idle: stop after this long with nothing to apply."
    )
    target_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between attempts while the target is down."
    )
    marker_margin_seconds: float = Field(
        300.0,
        gt=0,
        description="How far before an event the consumer looks for its refresh's END "
        "marker (allows for clock steps on the producer's host).",
    )
    session_timeout_ms: int = Field(
        DEFAULT_SESSION_TIMEOUT_MS,
        ge=1000,
        description="Consumer group session: a member that stops heartbeating (killed, its "
        "host gone) loses its partitions to the others this long after its last heartbeat. "
        "The broker accepts group.min.session.timeout.ms (6000 by default) and up.",
    )
    heartbeat_interval_ms: int = Field(
        DEFAULT_HEARTBEAT_INTERVAL_MS,
        ge=100,
        description="How often a consumer heartbeats; also how soon the survivors hear of "
        "a rebalance. Must be below session_timeout_ms (a third or less is safe).",
    )

    # --- metrics ----------------------------------------------------------------
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="produce / consume: serve Prometheus metrics at "
        "http://<metrics_host>:<port>/metrics; 0 or unset: no metrics server.",
    )
    metrics_host: str = Field(
        DEFAULT_METRICS_HOST,
        min_length=1,
        description="Address the metrics server listens on (0.0.0.0: every interface).",
    )

    # --- sensitive columns -----------------------------------------------------
    sensitive_columns: dict[str, dict[str, ColumnAction]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SENSITIVE_COLUMNS.items()},
        description="Per table, column -> exclude | mask | hash, applied before publishing. "
        "A value given replaces the default (customer_accounts' account numbers masked) whole.",
    )
    hash_key: SecretStr | None = Field(
        None, description="Key for HMAC-SHA256 of hashed columns (recommended)."
    )

    @field_validator("source_url", "target_url")
    @classmethod
    def _database_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The value is not repeated: it may hold a password.
        if value is None:
            return value
        value = postgresql_scheme(value)
        try:
            url = make_url(value)
            backend = url.get_backend_name()
        except (ArgumentError, ValueError):
            msg = "not a database URL: use sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
            raise ValueError(msg) from None
        if backend == "mssql":
            try:
                check_sqlserver_url(url, source=info.field_name == "source_url")
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
            return value
        if backend not in ("sqlite", "postgresql"):
            msg = f"unsupported database {backend!r}: use sqlite:///, postgresql:// or mssql://"
            raise ValueError(msg)
        try:
            check_url(url)  # names the URL with its password masked
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _sqlserver_defaults(cls, data: Any) -> Any:
        return sqlserver_defaults(data)

    @model_validator(mode="after")
    def _sqlserver_zone_named(self) -> Settings:
        if is_sqlserver_url(self.source_url) and "source_timezone" not in self.model_fields_set:
            raise ValueError(SQLSERVER_ZONE_REQUIRED)
        return self

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        found = {s: _BOOTSTRAP_SERVER.fullmatch(s) for s in servers}
        bad = [
            s
            for s, match in found.items()
            if match is None or not 1 <= int(match.group("port") or 9092) <= 65535
        ]
        if bad or not value.strip():
            msg = f"bad server {(bad or [value])[0]!r}: give HOST:PORT[,HOST:PORT...]"
            raise ValueError(msg)
        return value

    @field_validator("kafka")
    @classmethod
    def _kafka_strings(cls, value: dict[str, str]) -> dict[str, str]:
        """Refuse the keys confluent-kafka reads as Python objects (callbacks, a logger):
        a string there fails deep in the client instead of here."""
        for key, given in value.items():
            if key in PYTHON_OBJECT_OPTIONS:
                msg = (
                    f"{key!r} takes a Python object in confluent-kafka and cannot be set "
                    "from settings; leave it out (queuestream sets the callbacks it needs)"
                )
                raise ValueError(msg)
            if key in PYTHON_BOOL_OPTIONS and given.strip().lower() not in ("true", "false"):
                msg = f"{key!r} must be true or false, not {given!r}"
                raise ValueError(msg)
        return value

    @field_validator("source_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            msg = f"unknown time zone {value!r}: use an IANA name such as 'Europe/Amsterdam'"
            raise ValueError(msg) from exc
        return value

    _kafka_secrets: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        self._kafka_secrets = {
            key: read_secret(f"kafka_secret_files.{key}", path)
            for key, path in self.kafka_secret_files.items()
        }
        if self.source_password_file is not None:
            password = read_secret("source_password_file", self.source_password_file)
            self.source_url = with_password("source_url", self.source_url, password)
        if self.target_password_file is not None:
            if self.target_url is None:
                msg = "target_password_file is set but target_url is not: set both"
                raise ValueError(msg)
            password = read_secret("target_password_file", self.target_password_file)
            self.target_url = with_password("target_url", self.target_url, password)
        return self

    def kafka_options(self) -> dict[str, Any]:
        """``kafka`` with the values read from ``kafka_secret_files`` (which win); the
        options confluent-kafka reads as a Python bool made one (``"true"`` -> True)."""
        options: dict[str, Any] = {**self.kafka, **self._kafka_secrets}
        for key in PYTHON_BOOL_OPTIONS & options.keys():
            options[key] = str(options[key]).strip().lower() == "true"
        return options

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, hide_secrets(name, value)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            msg = (
                f"heartbeat_interval_ms {self.heartbeat_interval_ms} must be below "
                f"session_timeout_ms {self.session_timeout_ms} (a third of it or less)"
            )
            raise ValueError(msg)
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.source_timezone)

    @property
    def backoff(self) -> Backoff:
        """How long to wait between attempts while a database or the broker is down."""
        return Backoff(first=self.retry_backoff_seconds, maximum=self.target_retry_max_seconds)

    def target_url_for(self, target: str) -> str:
        return self.target_url or f"sqlite:///var/{target}.db"

    def group_for(self, target: str) -> str:
        return self.consumer_group or f"queuestream-{self.topic_prefix}-{target}"

    @property
    def effective_transactional_id(self) -> str:
        return self.transactional_id or f"queuestream-{self.topic_prefix}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("QUEUESTREAM_CONFIG")
        if config_file:
            sources.append(_TomlFile(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


_UNPARSABLE_FIELD = re.compile(r'error parsing value for field "(\w+)"')
#: What each setting that the environment gives as JSON looks like, for its error.
_JSON_EXAMPLES = {
    "kafka": '{"linger.ms": "20"}',
    "kafka_secret_files": '{"sasl.password": "/run/secrets/kafka-password"}',
    "sensitive_columns": '{"customer_accounts": {"BankAccountNumber": "mask"}}',
}


def _unparsable_variable(exc: SettingsError) -> str:
    """The line for a settings variable that is not JSON (``QUEUESTREAM_KAFKA='{"a":'``):
    its name and the place of the mistake, never its value (it may hold a password)."""
    found = _UNPARSABLE_FIELD.search(str(exc))
    field = found.group(1) if found else ""
    name = f"QUEUESTREAM_{field.upper()}" if field else "a QUEUESTREAM_ variable"
    cause = exc.__cause__
    where = ""
    if isinstance(cause, json.JSONDecodeError):
        where = f" ({cause.msg} at character {cause.pos + 1})"
    example = _JSON_EXAMPLES.get(field, '{"key": "value"}')
    return f"{name} is not valid JSON{where}: give a JSON object, e.g. {name}='{example}'"


class _TomlFile(TomlConfigSettingsSource):
    """The TOML settings file, read as UTF-8 with or without a byte-order mark (Windows
    editors write one, which TOML itself refuses); a file in another encoding stops with
    one line naming it."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            text = Path(file_path).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            msg = f"config file {file_path} is not UTF-8 text: save it as UTF-8"
            raise SettingsFileError(msg) from None
        return tomllib.loads(text)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; flags (``overrides`` that are not None) win over everything.

    Raises ConfigurationError with every invalid setting named.
    """
    flags = {k: v for k, v in overrides.items() if v is not None}
    previous = os.environ.get("QUEUESTREAM_CONFIG")
    if config_file is not None:
        if config_file.is_dir():
            msg = f"config file {config_file} is a directory: give the TOML file in it"
            raise ConfigurationError(msg)
        if not config_file.is_file():
            msg = f"config file {config_file} does not exist"
            raise ConfigurationError(msg)
        os.environ["QUEUESTREAM_CONFIG"] = str(config_file)
    try:
        settings = Settings(**flags)
    except SettingsError as exc:
        raise ConfigurationError(_unparsable_variable(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        path = os.environ.get("QUEUESTREAM_CONFIG")
        msg = f"config file {path} is not valid TOML: {exc}; fix it there"
        raise SettingsFileError(msg) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        msg = f"invalid settings: {problems}"
        raise ConfigurationError(msg) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("QUEUESTREAM_CONFIG", None)
            else:
                os.environ["QUEUESTREAM_CONFIG"] = previous
    from_env = _from_environment()
    if from_env:
        log.info("settings from the environment: %s", ", ".join(from_env))
    from_files = [f"kafka {key} <- {path}" for key, path in settings.kafka_secret_files.items()]
    from_files += [
        f"{name.removesuffix('_file')} <- {path}"
        for name in ("source_password_file", "target_password_file")
        if (path := getattr(settings, name)) is not None
    ]
    if from_files:
        log.info("secrets from files: %s", ", ".join(from_files))
    return settings


def _from_environment() -> list[str]:
    """The settings the environment holds, by name, never by value: a setting read from a
    variable other than its ``QUEUESTREAM_<NAME>`` (``KAFKA_BOOTSTRAP_SERVERS``,
    ``SCHEMA_REGISTRY_URL``) names the variable too. The variables a setting is read from,
    and in which order, are its ``validation_alias``; names match without case, as
    pydantic-settings matches them."""
    present = {variable.lower(): variable for variable in os.environ}
    found = []
    for name, field in Settings.model_fields.items():
        own = f"QUEUESTREAM_{name.upper()}"
        alias = field.validation_alias
        choices = (
            [c for c in alias.choices if isinstance(c, str)]
            if isinstance(alias, AliasChoices)
            else [own]
        )
        variable = next((present[c.lower()] for c in choices if c.lower() in present), None)
        if variable is not None:
            found.append(name if variable == own else f"{name} ({variable})")
    return sorted(found)
