"""Start and stop the real services the tests need (plain functions, no fixtures).

Kafka, in this order of preference:
  1. ``KAFKA_BOOTSTRAP_SERVERS`` (an external cluster; not started or stopped here),
  2. testcontainers' KafkaContainer when a Docker engine answers,
  3. a local broker from Apache Kafka's jars via ``scripts/kafka-local.sh``.
``QUEUESTREAM_TEST_KAFKA=local|docker`` forces 2 or 3.

PostgreSQL:
  1. ``QUEUESTREAM_TEST_POSTGRES_URL`` (an external server),
  2. a throwaway cluster via ``scripts/postgres-local.sh``.

Schema registry (Confluent-compatible):
  1. ``SCHEMA_REGISTRY_URL`` (an external registry),
  2. Apicurio Registry built from Maven Central by ``scripts/registry-local.sh``
     (in-memory storage: every start is empty).

Kafka Connect (a standalone worker reading the Kafka above, with Debezium's JDBC sink and
Apicurio's converter from Maven Central): ``scripts/connect-local.sh``.

Locally started services get free ports and fresh temporary directories, and
are told the pid of this process: they stop by themselves when it goes away,
even if pytest is killed before its finalizers run.

Under pytest-xdist (``make test`` runs ``pytest -n``) the services are started
once, by the controller process (``start_shared``), and handed to the workers
through the environment: the variables above (a registry started here goes in
``QUEUESTREAM_TEST_SCHEMA_REGISTRY_URL`` instead of ``SCHEMA_REGISTRY_URL``, which
would switch every producer under test to the registry's framing). A service
that could not be started is handed over as its error, so that the tests that
need it fail with the reason (they never skip).

(About 520 lines: each service's start, its hand-over to the workers and the Kafka
tools the tests read it with read best in one place; the Connect worker's start
depends on the broker's, and that hand-over is here too.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka-local.sh"
PG_SCRIPT = REPO_ROOT / "scripts" / "postgres-local.sh"
REGISTRY_SCRIPT = REPO_ROOT / "scripts" / "registry-local.sh"
CONNECT_SCRIPT = REPO_ROOT / "scripts" / "connect-local.sh"

KAFKA_START_TIMEOUT = 90  # seconds, readiness wait inside kafka-local.sh
PG_START_TIMEOUT = 60  # seconds, readiness wait inside postgres-local.sh
REGISTRY_FETCH_TIMEOUT = 1200  # seconds, a cold Maven build of the registry (~30 s usually)
REGISTRY_START_TIMEOUT = 90  # seconds, readiness wait inside registry-local.sh
CONNECT_FETCH_TIMEOUT = 900  # seconds, a cold download of the plugins (~80 MB)
CONNECT_START_TIMEOUT = 120  # seconds, readiness wait inside connect-local.sh
DOCKER_PING_TIMEOUT = 3  # seconds


class ServiceError(RuntimeError):
    """A service could not be provided; the message says what to do."""


@dataclass
class Service:
    """A running service: ``address`` is a bootstrap string or a SQLAlchemy URL."""

    address: str
    description: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)
    #: For outage tests: run a control command of the service's script ("down", "up").
    control: Callable[[str], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def control(service: Service, command: str) -> None:
    """Run ``command`` ("down", "up") of a service started with a control (an outage test's)."""
    assert service.control is not None, f"{service.description} cannot be stopped and started"
    service.control(command)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_script(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        msg = (
            f"{' '.join(args)} did not finish within {timeout:g}s\n"
            f"stdout:\n{_text(exc.stdout)}\nstderr:\n{_text(exc.stderr)}"
        )
        raise ServiceError(msg) from exc


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _script_failed(what: str, proc: subprocess.CompletedProcess[str], hint: str) -> ServiceError:
    return ServiceError(
        f"{what} failed (exit {proc.returncode}).\n{hint}\n"
        f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    )


# ------------------------------------------------------------------ Kafka --


def docker_available(timeout: int = DOCKER_PING_TIMEOUT) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def start_kafka() -> Service:
    _raise_if_failed_for_all("kafka")
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return Service(external, f"external Kafka at {external} (KAFKA_BOOTSTRAP_SERVERS)")
    mode = os.environ.get("QUEUESTREAM_TEST_KAFKA", "auto")
    if mode not in {"auto", "docker", "local"}:
        msg = f"QUEUESTREAM_TEST_KAFKA must be auto, docker or local, not {mode!r}"
        raise ServiceError(msg)
    if mode != "local" and docker_available():
        return start_kafka_container()
    if mode == "docker":
        msg = (
            "QUEUESTREAM_TEST_KAFKA=docker, but no Docker engine answers. Start Docker, "
            "or unset QUEUESTREAM_TEST_KAFKA to use a local broker from the Kafka jars."
        )
        raise ServiceError(msg)
    return start_local_kafka()


def start_kafka_container() -> Service:
    from testcontainers.community.kafka import KafkaContainer

    image = os.environ.get("QUEUESTREAM_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    container = (
        KafkaContainer(image)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "4")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_NUM_PARTITIONS", "1")
    )
    try:
        container.start(timeout=KAFKA_START_TIMEOUT)
    except Exception as exc:
        with contextlib.suppress(Exception):  # best effort cleanup after a failed start
            container.stop()
        msg = (
            f"the Kafka container ({image}) did not start: {exc}. Set "
            "QUEUESTREAM_TEST_KAFKA=local to use the jar broker instead."
        )
        raise ServiceError(msg) from exc
    bootstrap = container.get_bootstrap_server()
    return Service(bootstrap, f"Kafka container {image} at {bootstrap}", container.stop)


def start_local_kafka() -> Service:
    if shutil.which("java") is None:
        msg = (
            "no Kafka broker for the tests: KAFKA_BOOTSTRAP_SERVERS is not set, no Docker "
            "engine answers, and `java` is not installed for the local jar broker. Install "
            "Java 17+ (apt-get install -y openjdk-17-jre-headless) and run "
            "`scripts/kafka-local.sh fetch`, or point KAFKA_BOOTSTRAP_SERVERS at a broker."
        )
        raise ServiceError(msg)
    state_dir = Path(tempfile.mkdtemp(prefix="queuestream-kafka-"))
    port, controller_port = free_ports(2)
    env = dict(os.environ)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.update(
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(controller_port),
        KAFKA_STATE_DIR=str(state_dir),
        KAFKA_DATA_DIR=str(state_dir / "data"),
        KAFKA_START_TIMEOUT=str(KAFKA_START_TIMEOUT),
        KAFKA_OWNER_PID=str(os.getpid()),
    )
    # up also fetches the jars when missing (Maven Central), hence the margin.
    proc = _run_script([str(KAFKA_SCRIPT), "up"], env, KAFKA_START_TIMEOUT + 300)
    if proc.returncode != 0:
        shutil.rmtree(state_dir, ignore_errors=True)
        err = _script_failed(
            "scripts/kafka-local.sh up",
            proc,
            "Run `scripts/kafka-local.sh fetch` first if the jars are missing, "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing broker.",
        )
        raise err

    def stop() -> None:
        try:
            _run_script([str(KAFKA_SCRIPT), "down"], env, 90)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)

    def control(command: str) -> None:
        """``down`` stops the broker, ``up`` starts it again on the same port and data."""
        done = _run_script([str(KAFKA_SCRIPT), command], env, KAFKA_START_TIMEOUT + 60)
        if done.returncode != 0:
            what = f"scripts/kafka-local.sh {command}"
            raise _script_failed(what, done, "see its output")

    bootstrap = f"127.0.0.1:{port}"
    return Service(bootstrap, f"local jar Kafka broker at {bootstrap} ({state_dir})", stop, control)


# ------------------------------------------------------------- PostgreSQL --


def start_postgres() -> Service:
    _raise_if_failed_for_all("postgres")
    external = os.environ.get("QUEUESTREAM_TEST_POSTGRES_URL")
    if external:
        return Service(external, "external PostgreSQL (QUEUESTREAM_TEST_POSTGRES_URL)")
    return start_local_postgres()


def start_local_postgres() -> Service:
    (port,) = free_ports(1)
    # /tmp: reachable by the `postgres` account when running as root; the script
    # chowns the directory. Keep the path short (Unix socket path limit).
    state_dir = Path(tempfile.mkdtemp(prefix="qs-pg-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        PGPORT_LOCAL=str(port),
        PG_STATE_DIR=str(state_dir),
        PG_START_TIMEOUT=str(PG_START_TIMEOUT),
        PG_FSYNC="off",
        PG_OWNER_PID=str(os.getpid()),
    )
    proc = _run_script([str(PG_SCRIPT), "up"], env, PG_START_TIMEOUT + 60)
    if proc.returncode != 0:
        shutil.rmtree(state_dir, ignore_errors=True)
        err = _script_failed(
            "scripts/postgres-local.sh up",
            proc,
            "Install the server with `scripts/postgres-local.sh install` (as root), "
            "or set QUEUESTREAM_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db.",
        )
        raise err

    def stop() -> None:
        try:
            _run_script([str(PG_SCRIPT), "down"], env, 90)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)

    def control(command: str) -> None:
        done = _run_script([str(PG_SCRIPT), command], env, PG_START_TIMEOUT + 60)
        if done.returncode != 0:
            msg = f"scripts/postgres-local.sh {command}"
            raise _script_failed(msg, done, "see its output")

    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    return Service(url, f"local PostgreSQL at 127.0.0.1:{port} ({state_dir})", stop, control)


# -------------------------------------------------------- schema registry --


def start_schema_registry() -> Service:
    _raise_if_failed_for_all("registry")
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        return Service(external, f"external schema registry at {external} (SCHEMA_REGISTRY_URL)")
    shared = os.environ.get(SHARED_REGISTRY_VARIABLE)
    if shared:
        return Service(shared, f"schema registry at {shared} ({SHARED_REGISTRY_VARIABLE})")
    return start_local_schema_registry()


def start_local_schema_registry(port: int | None = None) -> Service:
    """A registry of its own on ``port`` (a free one when None): a test may point a command
    at a port first and start the registry there later."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        msg = (
            "SCHEMA_REGISTRY_URL is not set and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed to "
            "build and run the local one. Install Java 17+ and Maven (apt-get install -y "
            "openjdk-17-jre-headless maven) and run `scripts/registry-local.sh fetch`, or point "
            "SCHEMA_REGISTRY_URL at a Confluent-compatible registry."
        )
        raise ServiceError(msg)
    if port is None:
        (port,) = free_ports(1)
    env = dict(os.environ)
    env.update(
        REGISTRY_PORT=str(port),
        REGISTRY_START_TIMEOUT=str(REGISTRY_START_TIMEOUT),
        REGISTRY_OWNER_PID=str(os.getpid()),
    )
    # A no-op once built; a cold build resolves from Maven Central, hence its own timeout.
    proc = _run_script([str(REGISTRY_SCRIPT), "fetch"], env, REGISTRY_FETCH_TIMEOUT)
    if proc.returncode != 0:
        err = _script_failed(
            "scripts/registry-local.sh fetch",
            proc,
            f"The build log is {REPO_ROOT / 'var' / 'registry' / 'fetch.log'}. "
            "Or set SCHEMA_REGISTRY_URL to use an existing registry.",
        )
        raise err
    proc = _run_script([str(REGISTRY_SCRIPT), "up"], env, REGISTRY_START_TIMEOUT + 60)
    if proc.returncode != 0:
        err = _script_failed(
            "scripts/registry-local.sh up",
            proc,
            "Or set SCHEMA_REGISTRY_URL to use an existing registry.",
        )
        raise err
    url = proc.stdout.strip().splitlines()[-1]

    def stop() -> None:
        if _run_script([str(REGISTRY_SCRIPT), "down"], env, 90).returncode == 0:
            shutil.rmtree(REPO_ROOT / "var" / "registry" / str(port), ignore_errors=True)

    return Service(url, f"local Apicurio schema registry at {url}", stop)


# ---------------------------------------------------------- Kafka Connect --


def start_connect(bootstrap: str | None = None) -> Service:
    """A Connect worker reading ``bootstrap`` (default: ``KAFKA_BOOTSTRAP_SERVERS``)."""
    _raise_if_failed_for_all("connect")
    shared = os.environ.get(SHARED_CONNECT_VARIABLE)
    if shared:
        return Service(shared, f"Kafka Connect worker at {shared} ({SHARED_CONNECT_VARIABLE})")
    bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        msg = "no Kafka for the Connect worker: start Kafka first or set KAFKA_BOOTSTRAP_SERVERS"
        raise ServiceError(msg)
    if shutil.which("java") is None or shutil.which("mvn") is None:
        msg = (
            "the Kafka Connect worker needs Java 17+ and Maven (apt-get install -y "
            "openjdk-17-jre-headless maven), then `scripts/connect-local.sh fetch`."
        )
        raise ServiceError(msg)
    (port,) = free_ports(1)
    env = dict(os.environ)
    env.update(
        CONNECT_PORT=str(port),
        CONNECT_BOOTSTRAP_SERVERS=bootstrap,
        CONNECT_START_TIMEOUT=str(CONNECT_START_TIMEOUT),
        CONNECT_OWNER_PID=str(os.getpid()),
    )
    for command, timeout in (("fetch", CONNECT_FETCH_TIMEOUT), ("up", CONNECT_START_TIMEOUT + 60)):
        proc = _run_script([str(CONNECT_SCRIPT), command], env, timeout)
        if proc.returncode != 0:
            what = f"scripts/connect-local.sh {command}"
            hint = f"The worker's files are in {REPO_ROOT / 'var' / 'connect' / str(port)}."
            raise _script_failed(what, proc, hint)
    url = proc.stdout.strip().splitlines()[-1]

    def stop() -> None:
        if _run_script([str(CONNECT_SCRIPT), "down"], env, 90).returncode == 0:
            shutil.rmtree(REPO_ROOT / "var" / "connect" / str(port), ignore_errors=True)

    return Service(url, f"local Kafka Connect worker at {url} (reading {bootstrap})", stop)


# ----------------------------------------------- once per pytest-xdist run --

#: Where a registry started by the xdist controller is handed to the workers.
SHARED_REGISTRY_VARIABLE = "QUEUESTREAM_TEST_SCHEMA_REGISTRY_URL"
#: Where a Connect worker started by the xdist controller is handed to the workers.
SHARED_CONNECT_VARIABLE = "QUEUESTREAM_TEST_CONNECT_URL"
#: Each service's starter, and the variable through which its address is handed over.
_SHARED: dict[str, tuple[Callable[[], Service], str]] = {
    "kafka": (start_kafka, "KAFKA_BOOTSTRAP_SERVERS"),
    "postgres": (start_postgres, "QUEUESTREAM_TEST_POSTGRES_URL"),
    "registry": (start_schema_registry, SHARED_REGISTRY_VARIABLE),
    "connect": (start_connect, SHARED_CONNECT_VARIABLE),
}
#: A service started with the address of another (its thread waits for that one).
_NEEDS = {"connect": "kafka"}


def _failed_variable(kind: str) -> str:
    return f"QUEUESTREAM_TEST_{kind.upper()}_FAILED"


def _raise_if_failed_for_all(kind: str) -> None:
    """A service the xdist controller could not start fails here, with its reason."""
    error = os.environ.get(_failed_variable(kind))
    if error:
        raise ServiceError(error)


def start_shared(kinds: tuple[str, ...] = tuple(_SHARED)) -> list[Service]:
    """Start ``kinds`` of service ("kafka", "postgres", "registry", "connect") side by side,
    for this process's children (pytest-xdist's workers): each address, or the error that
    stopped its start, goes into ``os.environ``. Returns what to stop at the end
    (``stop_all``). A service of ``_NEEDS`` starts once the one it needs is up."""
    outcomes: dict[str, Service | str] = {}
    done = {kind: threading.Event() for kind in kinds}

    def start(kind: str) -> None:
        try:
            need = _NEEDS.get(kind)
            if need is None or need not in done:
                outcomes[kind] = _SHARED[kind][0]()
            else:
                done[need].wait()
                outcomes[kind] = start_connect(_needed(kind, need, outcomes.get(need)))
        except Exception as exc:  # handed to the tests that need it, as their failure
            outcomes[kind] = str(exc) if isinstance(exc, ServiceError) else repr(exc)
        finally:
            done[kind].set()

    _side_by_side([functools.partial(start, kind) for kind in kinds])
    started = []
    for kind, outcome in outcomes.items():
        if isinstance(outcome, Service):
            os.environ[_SHARED[kind][1]] = outcome.address
            started.append(outcome)
        else:
            os.environ[_failed_variable(kind)] = outcome
    return started


def _needed(kind: str, need: str, outcome: Service | str | None) -> str:
    """The address of the service ``kind`` needs, or why it has none."""
    if not isinstance(outcome, Service):
        msg = f"{kind} needs {need}, which did not start: {outcome}"
        raise ServiceError(msg)
    return outcome.address


def stop_all(started: list[Service]) -> None:
    """Stop services side by side (each stop waits for its process to end)."""
    _side_by_side([service.stop for service in started])


def _side_by_side(calls: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ------------------------------------------------------------ Kafka tools --

KAFKA_TOOL_TIMEOUT = 120  # seconds: a JVM start plus the request


def kafka_tool(name: str, *args: str) -> str:
    """Run one of Apache Kafka's own command-line tools (e.g. ``kafka-consumer-groups``).

    The tools come from the kafka-tools jar beside the broker's (``scripts/kafka-local.sh
    tool``); the output is returned, a non-zero exit raises ServiceError with it.
    """
    proc = _run_script(
        [str(KAFKA_SCRIPT), "tool", name, *args], dict(os.environ), KAFKA_TOOL_TIMEOUT
    )
    if proc.returncode != 0:
        what = f"kafka-local.sh tool {name}"
        raise _script_failed(what, proc, "Is the broker up?")
    return proc.stdout


def consumer_group_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int | None]:
    """A group's committed offsets as Kafka's ``kafka-consumer-groups --describe`` shows them."""
    out = kafka_tool(
        "kafka-consumer-groups", "--bootstrap-server", bootstrap, "--describe", "--group", group
    )
    found: dict[tuple[str, int], int | None] = {}
    header: list[str] | None = None
    for line in out.splitlines():
        cells = line.split()
        if cells[:3] == ["GROUP", "TOPIC", "PARTITION"]:
            header = cells
            continue
        if header is None or len(cells) < 4 or cells[0] != group:
            continue
        row = dict(zip(header, cells, strict=False))
        current = row["CURRENT-OFFSET"]
        found[(row["TOPIC"], int(row["PARTITION"]))] = None if current == "-" else int(current)
    return found
