"""The Kafka Connect configuration of docs/kafka-connect.md is the one the scripts and the
test run.

The sink connector block is read by tests/integration/test_debezium_sink.py itself; the
worker block must name the settings scripts/connect-local.sh gives its worker, and the
connector's ``topics.regex`` must take every change topic and nothing else under the
prefix (the batches topic and the dead-letter topics break the sink).
"""

from __future__ import annotations

import re

from bench.connect_sink import documented_properties
from bench.services import REPO_ROOT
from queuestream.tables import BATCHES, TABLES, topic_for

_WORKER = re.compile(r'cat >"\$VAR/worker\.properties" <<EOF\n(.*?)\nEOF', re.DOTALL)


def test_the_readme_worker_is_the_one_connect_local_runs() -> None:
    script = (REPO_ROOT / "scripts" / "connect-local.sh").read_text(encoding="utf-8")
    found = _WORKER.search(script)
    assert found, "scripts/connect-local.sh writes no worker.properties"
    lines = [line for line in found.group(1).splitlines() if line and not line.startswith("#")]
    keys = {line.partition("=")[0] for line in lines}
    readme = documented_properties("worker")
    assert keys == set(readme)
    assert readme["consumer.isolation.level"] == "read_committed"


def test_the_readme_pattern_takes_the_change_topics_only() -> None:
    """Java's Pattern.matches and Python's fullmatch agree on this pattern's syntax."""
    pattern = re.compile(documented_properties("sink")["topics.regex"])
    for spec in TABLES:
        assert pattern.fullmatch(topic_for("exigo", spec.name)), spec.name
    for name in (BATCHES, "orders.dlq", "orders.x"):
        assert not pattern.fullmatch(topic_for("exigo", name)), name
    assert not pattern.fullmatch("exigo2.orders")
