"""A Kafka broker that only speaks SASL_SSL and a PostgreSQL that requires TLS.

Apart from tests/services.py (which provides the plain services every test shares)
because it is started by one test module only and has more moving parts: a CA and a
broker certificate made with Java's keytool (``scripts/make-certs.sh``), SCRAM-SHA-512
credentials created when the KRaft storage is formatted (``--add-scram``), and a
single node whose client listener is SASL_SSL on 127.0.0.1. The broker talks to
itself (inter-broker, controller) over PLAINTEXT listeners on 127.0.0.1 that are not
advertised to clients, so every client request goes through TLS and SCRAM.

The PostgreSQL is a fresh local cluster (``services.start_local_postgres``) switched
to ``ssl = on`` with a certificate for 127.0.0.1 from the same kind of keytool CA
(the private key converted to PEM with ``cryptography``), and a pg_hba.conf that
accepts only TLS connections from 127.0.0.1, with SCRAM passwords for everyone but
the test's superuser.

Like the other local services they get free ports and a fresh temporary directory,
and a watchdog stops it when this process is gone.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.services import (
    KAFKA_SCRIPT,
    REPO_ROOT,
    Service,
    ServiceError,
    _run_script,
    _script_failed,
    free_ports,
    start_local_postgres,
)

__all__ = [
    "SECURE_USER",
    "SecureKafka",
    "TlsPostgres",
    "start_sasl_ssl_kafka",
    "start_tls_postgres",
]

SECURE_USER = "alice"
MAKE_CERTS = REPO_ROOT / "scripts" / "make-certs.sh"
LIB_DIR = REPO_ROOT / ".cache" / "kafka" / "lib"
START_TIMEOUT = 90  # seconds until the SASL_SSL listener answers a metadata request
STOP_TIMEOUT = 30  # seconds after SIGTERM before SIGKILL
TOOL_TIMEOUT = 120  # seconds: keytool runs, the storage format
JAVA_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
]


@dataclass
class SecureKafka:
    """A running SASL_SSL broker and what a client needs to reach it."""

    bootstrap: str
    ca_pem: Path
    password: str
    directory: Path
    pid: int

    @property
    def user(self) -> str:
        return SECURE_USER

    def client_options(self, password: str | None = None) -> dict[str, str]:
        """librdkafka options for this broker (``password`` overrides the right one)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": SECURE_USER,
            "sasl.password": self.password if password is None else password,
            "ssl.ca.location": str(self.ca_pem),
        }

    def stop(self) -> None:
        try:
            _stop_pid(self.pid)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_id() -> str:
    """A KRaft cluster id as Kafka's ``Uuid.randomUuid`` makes one: URL-safe base64 of
    16 random bytes, never starting with "-", which the storage tool's argument parser
    reads as an option (1 id in 64 did: the format failed with "--cluster-id expected
    one argument")."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _run(args: list[str], what: str) -> None:
    proc = _run_script(args, dict(os.environ), TOOL_TIMEOUT)
    if proc.returncode != 0:
        raise _script_failed(what, proc, "Is Java 17+ with keytool installed?")


def _properties(directory: Path, ports: list[int], store_password: str) -> str:
    client, internal, controller = ports
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return f"""# SASL_SSL broker for tests/secure_services.py: one node, KRaft combined mode
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PKCS12
ssl.keystore.location={directory / "certs" / "server.p12"}
ssl.keystore.password={store_password}
ssl.key.password={store_password}
ssl.client.auth=none
log.dirs={directory / "data"}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
"""


def _java(*args: str) -> list[str]:
    return ["java", *JAVA_OPTS, "-cp", f"{LIB_DIR}/*", *args]


def start_sasl_ssl_kafka() -> SecureKafka:
    """Start a SASL_SSL (SCRAM-SHA-512 over TLS) broker on free ports of 127.0.0.1."""
    if shutil.which("java") is None or shutil.which("keytool") is None:
        msg = "the SASL_SSL broker needs Java 17+ with keytool (openjdk-17-jdk-headless)"
        raise ServiceError(msg)
    if not (LIB_DIR / ".complete").exists():
        _run([str(KAFKA_SCRIPT), "fetch"], "scripts/kafka-local.sh fetch")
    directory = Path(tempfile.mkdtemp(prefix="queuestream-sasl-kafka-"))
    try:
        return _start(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _start(directory: Path) -> SecureKafka:
    store_password = uuid.uuid4().hex
    password = f"pw-{uuid.uuid4().hex}"
    _run([str(MAKE_CERTS), str(directory / "certs"), store_password], "scripts/make-certs.sh")
    ports = free_ports(3)
    props = directory / "server.properties"
    props.write_text(_properties(directory, ports, store_password))
    cluster_id = _cluster_id()
    scram = f"SCRAM-SHA-512=[name={SECURE_USER},password={password}]"
    _run(
        _java(
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(props),
            "--cluster-id",
            cluster_id,
            "--standalone",
            "--add-scram",
            scram,
        ),
        "formatting the SASL_SSL broker's storage",
    )
    log_file = directory / "broker.log"
    with log_file.open("wb") as out:
        broker = subprocess.Popen(
            _java(f"-Dkafka.logs.dir={directory}", "kafka.Kafka", str(props)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _watch(os.getpid(), broker.pid)
    kafka = SecureKafka(
        f"127.0.0.1:{ports[0]}", directory / "certs" / "ca.pem", password, directory, broker.pid
    )
    deadline = time.monotonic() + START_TIMEOUT
    admin = AdminClient(
        {"bootstrap.servers": kafka.bootstrap, "log_level": 0, **kafka.client_options()}
    )
    while True:
        if broker.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            msg = f"the SASL_SSL broker exited during start-up:\n{tail}"
            raise ServiceError(msg)
        try:
            if admin.list_topics(timeout=2).brokers:
                return kafka
        except Exception:
            pass
        if time.monotonic() > deadline:
            _stop_pid(broker.pid)
            tail = log_file.read_text(errors="replace")[-3000:]
            msg = f"the SASL_SSL broker did not answer within {START_TIMEOUT}s:\n{tail}"
            raise ServiceError(msg)
        time.sleep(0.5)


def _watch(owner: int, pid: int) -> None:
    """A detached shell that stops broker ``pid`` once process ``owner`` has gone."""
    script = (
        'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 2; done; '
        'kill -TERM "$2" 2>/dev/null'
    )
    subprocess.Popen(
        ["bash", "-c", script, "sasl-kafka-watchdog", str(owner), str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid if not _alive(pid) else 0
        if finished:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class TlsPostgres:
    """A PostgreSQL server that accepts TLS connections only, and its CA in PEM."""

    server: Service
    ca_pem: Path
    port: int
    directory: Path

    def url(self, user: str, database: str, password: str | None = None) -> str:
        """A URL that verifies the server's certificate and name (``sslmode=verify-full``)."""
        secret = f":{password}" if password is not None else ""
        return (
            f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={self.ca_pem}"
        )

    def admin_url(self, database: str = "postgres") -> str:
        return self.url("postgres", database)

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


_HBA = """# tests/secure_services.py: TLS only from 127.0.0.1
local   all  all                 trust
hostssl all  postgres 127.0.0.1/32 trust
hostssl all  all      127.0.0.1/32 scram-sha-256
host    all  all      127.0.0.1/32 reject
"""


def start_tls_postgres() -> TlsPostgres:
    """A fresh local PostgreSQL with ``ssl = on`` and TLS-only access; see the docstring."""
    directory = Path(tempfile.mkdtemp(prefix="queuestream-tls-pg-"))
    server = start_local_postgres()
    try:
        store_password = uuid.uuid4().hex
        certs = directory / "certs"
        _run([str(MAKE_CERTS), str(certs), store_password], "scripts/make-certs.sh")
        key, _, _ = pkcs12.load_key_and_certificates(
            (certs / "server.p12").read_bytes(), store_password.encode()
        )
        assert key is not None
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        engine = sa.create_engine(server.address, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            data = Path(str(conn.execute(sa.text("SHOW data_directory")).scalar_one()))
            files = {
                data / "server.crt": (certs / "server.pem").read_bytes(),
                data / "server.key": key_pem,
                data / "pg_hba.conf": _HBA.encode(),
            }
            owner = data.stat()
            for path, content in files.items():
                path.write_bytes(content)
                path.chmod(0o600)
                os.chown(path, owner.st_uid, owner.st_gid)
            conn.execute(sa.text("ALTER SYSTEM SET ssl = on"))
            conn.execute(sa.text(f"ALTER SYSTEM SET ssl_cert_file = '{data / 'server.crt'}'"))
            conn.execute(sa.text(f"ALTER SYSTEM SET ssl_key_file = '{data / 'server.key'}'"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        engine.dispose()
        port = int(server.address.rsplit(":", 1)[1].split("/", 1)[0])
        tls = TlsPostgres(server, certs / "ca.pem", port, directory)
        _wait_for_tls(tls)
    except BaseException:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return tls


def _wait_for_tls(tls: TlsPostgres) -> None:
    """The reload is asynchronous: wait until a verify-full connection uses TLS."""
    deadline = time.monotonic() + 30
    while True:
        engine = sa.create_engine(tls.admin_url(), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                if conn.execute(sa.text(query)).scalar_one():
                    return
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
        finally:
            engine.dispose()
        time.sleep(0.3)
