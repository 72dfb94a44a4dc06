"""Where the benchmarks find Kafka and PostgreSQL, and the settings a run uses with them.

Kafka: ``--bootstrap-servers``, else ``KAFKA_BOOTSTRAP_SERVERS``, else
``scripts/kafka-local.sh bootstrap``. PostgreSQL: ``--postgres-url`` (a server's
maintenance database), else ``scripts/postgres-local.sh url``. :func:`run_script` runs
those scripts for every benchmark (bench/debezium_peer.py starts its services with it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from bench.errors import BenchError
from queuestream.kafka_clients import admin_client
from queuestream.settings import Settings, load_settings

__all__ = [
    "REPO_ROOT",
    "bench_settings",
    "check_kafka",
    "resolve_bootstrap",
    "resolve_postgres",
    "run_script",
]


REPO_ROOT = Path(__file__).resolve().parent.parent


def run_script(
    name: str, command: str, *, env: Mapping[str, str] | None = None, timeout: float = 30
) -> str:
    """``scripts/NAME COMMAND`` run from the repository root: the last line it printed.

    ``env`` replaces the environment when given. A failure or a timeout is a
    :class:`BenchError` naming the command, with the end of what the script said.
    """
    what = f"scripts/{name} {command}"
    try:
        proc = subprocess.run(
            [str(REPO_ROOT / "scripts" / name), command],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        msg = f"{what} did not finish within {timeout:g}s"
        raise BenchError(msg) from None
    if proc.returncode != 0:
        said = proc.stderr.strip() or proc.stdout.strip()
        msg = f"{what} failed: {said[-2000:]}"
        raise BenchError(msg)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def resolve_bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap_servers:
        return str(args.bootstrap_servers)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return run_script("kafka-local.sh", "bootstrap")


def resolve_postgres(args: argparse.Namespace) -> str:
    if args.postgres_url:
        return str(args.postgres_url)
    return run_script("postgres-local.sh", "url")


def check_kafka(bootstrap: str) -> None:
    admin = admin_client(load_settings(kafka_bootstrap_servers=bootstrap))
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as exc:
        msg = f"Kafka at {bootstrap} is unreachable ({exc}): start it (make kafka-up)"
        raise BenchError(msg) from None
    if not metadata.brokers:
        msg = f"Kafka at {bootstrap} reports no brokers"
        raise BenchError(msg)


def bench_settings(
    source_url: str, bootstrap: str, prefix: str, args: argparse.Namespace, **more: Any
) -> Settings:
    return load_settings(
        source_url=source_url,
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        partitions=args.partitions,
        settle_seconds=0,
        pg_clock_allowance_seconds=0,
        first_window_hours=args.first_window_hours,
        schema_registry_url=None,
        kafka=dict(args.kafka),
        **more,
    )
