"""Where a figure was measured: the machine, the versions, the broker, the commit.

Every report carries :func:`environment`; the readable output ends with
:func:`environment_line`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from confluent_kafka import libversion as librdkafka_version

from bench.cpu import proc_stat
from bench.services import REPO_ROOT
from schemas.avro import compiled_reader, compiled_writer

__all__ = [
    "broker_index_bytes",
    "broker_jvm_flags",
    "broker_uptime_seconds",
    "environment",
    "environment_line",
    "git_describe",
]


def _local_broker_dir(bootstrap: str) -> Path | None:
    """scripts/kafka-local.sh's state folder for the broker at ``bootstrap`` in this
    checkout (its pid file and server.properties), or None for any other broker."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        return None
    return REPO_ROOT / "var" / "kafka" / port


def _local_broker_pid(bootstrap: str) -> int | None:
    """The pid scripts/kafka-local.sh wrote for the broker at ``bootstrap``, if any."""
    state = _local_broker_dir(bootstrap)
    try:
        return int((state / "kafka.pid").read_text().strip()) if state else None
    except (OSError, ValueError):
        return None


def broker_jvm_flags(bootstrap: str) -> str | None:
    """The broker's JVM flags, when it runs from scripts/kafka-local.sh in this checkout."""
    pid = _local_broker_pid(bootstrap)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    flags = [a.decode() for a in cmdline if a.startswith((b"-XX:", b"-Xm"))]
    return " ".join(flags)


def broker_uptime_seconds(bootstrap: str) -> float | None:
    """How long the broker from scripts/kafka-local.sh in this checkout has run; None for
    any other broker. Its JIT compiler takes about a tenth of a core over its first few
    minutes under a benchmark's load, which a broker up for days no longer pays."""
    pid = _local_broker_pid(bootstrap)
    if pid is None:
        return None
    try:
        fields = proc_stat(pid)
        booted = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime: ticks after boot
    return round(booted - started, 1)


def broker_index_bytes(bootstrap: str) -> int | None:
    """The local broker's ``log.index.size.max.bytes`` (scripts/kafka-local.sh: 1 MB, as
    Kafka's 10 MB index files cost the broker CPU on a benchmark's new topics)."""
    state = _local_broker_dir(bootstrap)
    try:
        lines = (state / "server.properties").read_text().splitlines() if state else []
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "log.index.size.max.bytes" and value.strip().isdigit():
            return int(value)
    return None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def git_describe() -> str | None:
    """The commit measured, with "+dirty" when the work tree has changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head.strip() + ("+dirty" if dirty.strip() else "")


def environment(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where a figure was measured: machine, versions, broker, options."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "librdkafka": librdkafka_version()[0],
        "bootstrap_servers": bootstrap,
        "broker_jvm_flags": broker_jvm_flags(bootstrap),
        "broker_index_bytes": broker_index_bytes(bootstrap),
        "broker_uptime_seconds": broker_uptime_seconds(bootstrap),
        "partitions": args.partitions,
        "kafka_options": args.kafka,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "git": git_describe(),
        # Whether the Avro readers and writers ran compiled (QUEUESTREAM_AVRO_C=0: not).
        "avro_compiled": {
            "readers": compiled_reader.AVAILABLE,
            "writers": compiled_writer.AVAILABLE,
        },
    }


def environment_line(env: dict[str, Any], kafka_label: str) -> str:
    """:func:`environment` as one line for the readable output."""
    return (
        f"{env['cpus']} CPUs (load {env['load_average'][0]:.2f}), Python {env['python']}, "
        f"librdkafka {env['librdkafka']}, {env['partitions']} partitions, "
        f"queuestream {env['git']}, broker {env['bootstrap_servers']}"
        + ("" if all(env["avro_compiled"].values()) else ", Avro partly in Python")
        + (f" ({env['broker_jvm_flags']})" if env["broker_jvm_flags"] else "")
        + (f", {kafka_label} {env['kafka_options']}" if env["kafka_options"] else "")
    )
