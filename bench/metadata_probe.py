#!/usr/bin/env python
"""What the producer's check that the broker answers costs, by the size of the cluster.

Before each refresh's transaction the producer asks the broker for metadata
(:meth:`producer.publisher.TransactionalPublisher.check_reachable`), so that no snapshot
is taken while Kafka is away. Asked for every topic, the answer grows with the
cluster; asked for one topic (the batches topic, since 0.9.3), it does not. This makes
``--topics`` topics of ``--partitions`` partitions under a fresh prefix, times
``list_topics`` both ways from a producer (wall and the process's CPU a request, the
median of ``--requests``), and deletes the topics again.

    .venv/bin/python -m bench.metadata_probe --topics 1000          # local broker
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from bench.environment import environment, environment_line
from bench.errors import BenchError
from bench.output import out, print_runs
from bench.services import check_kafka, resolve_bootstrap
from bench.session import main_with
from queuestream.kafka_clients import admin_client
from queuestream.settings import load_settings

__all__ = ["main", "run"]

_BATCH = 200  # topics a CreateTopics or DeleteTopics request


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.metadata_probe",
        description="list_topics for every topic against one topic, by cluster size",
    )
    p.add_argument("--topics", type=int, default=1000, help="topics to make (%(default)s)")
    p.add_argument("--partitions", type=int, default=6, help="of each (%(default)s)")
    p.add_argument("--requests", type=int, default=50, help="timed of each kind (%(default)s)")
    p.add_argument("--bootstrap-servers", help="Kafka (default: KAFKA_BOOTSTRAP_SERVERS, local)")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = p.parse_args(argv)
    if min(args.topics, args.partitions, args.requests) <= 0:
        p.error("--topics, --partitions, --requests: positive")
    args.kafka = {}
    return args


def _timed(request: Callable[[], Any], times: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``request``."""
    wall, cpu = [], []
    for _ in range(times):
        w, c = time.perf_counter(), time.process_time()
        request()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {
        "wall_ms": round(statistics.median(wall) * 1000, 2),
        "cpu_ms": round(statistics.median(cpu) * 1000, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = resolve_bootstrap(args)
    check_kafka(bootstrap)
    admin = admin_client(load_settings(kafka_bootstrap_servers=bootstrap))
    prefix = f"bench-{uuid.uuid4().hex[:8]}-metadata"
    names = [f"{prefix}.t{i:05d}" for i in range(args.topics)]
    try:
        for i in range(0, len(names), _BATCH):
            made = [NewTopic(t, args.partitions, 1) for t in names[i : i + _BATCH]]
            for future in admin.create_topics(made, operation_timeout=60).values():
                future.result()
        producer = Producer({"bootstrap.servers": bootstrap})
        deadline = time.monotonic() + 60
        while len({t for t in producer.list_topics(timeout=10).topics if t in names}) < len(names):
            if time.monotonic() > deadline:
                msg = "the topics made are not all in the broker's metadata after 60 s"
                raise BenchError(msg)
            time.sleep(0.5)
        in_cluster = len(producer.list_topics(timeout=10).topics)
        every = _timed(lambda: producer.list_topics(timeout=10), args.requests)
        one = _timed(lambda: producer.list_topics(names[0], timeout=10), args.requests)
    except KafkaException as exc:
        msg = f"Kafka: {exc}"
        raise BenchError(msg) from None
    finally:
        for i in range(0, len(names), _BATCH):
            for future in admin.delete_topics(names[i : i + _BATCH], operation_timeout=60).values():
                with contextlib.suppress(KafkaException):
                    future.result()
    return {
        "topics_in_cluster": in_cluster,
        "partitions_per_topic": args.partitions,
        "requests": args.requests,
        "every_topic": every,
        "one_topic": one,
        "environment": environment(bootstrap, args),
    }


def print_table(report: dict[str, Any]) -> None:
    rows = [
        {"asked": "every topic", **report["every_topic"]},
        {"asked": "one topic", **report["one_topic"]},
    ]
    print_runs(
        f"list_topics from a producer, {report['topics_in_cluster']:,} topics in the cluster "
        f"({report['partitions_per_topic']} partitions each made here)",
        (("asked for", "{asked}"), ("wall ms", "{wall_ms:.2f}"), ("CPU ms", "{cpu_ms:.2f}")),
        rows,
        caption=f"median of {report['requests']} requests of each kind",
    )
    out.print(environment_line(report["environment"], "Kafka options"))


def main(argv: list[str] | None = None) -> int:
    return main_with(parse_args(argv), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
