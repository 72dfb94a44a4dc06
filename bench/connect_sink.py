"""Debezium's JDBC sink on a Kafka Connect worker, driven from Python.

Two users: the test that holds the event contract to Debezium's sink
(tests/integration/test_debezium_sink.py) and the consumers benchmark's peer
(bench/debezium_peer.py, ``--peer debezium``). Both run the connector
configuration of docs/kafka-connect.md: its fenced ``properties`` blocks, each after a
``<!-- connect: NAME -->`` comment, are read here with Java's ``.properties`` escaping
(``\\\\.`` is a regex's ``\\.``), so that what the page tells users to copy is exactly
what runs; a caller overrides only addresses, names and what it says it adds.
Connectors are created, watched and deleted through the worker's REST API; every wait is
bounded and says what it waited for, with the connector's own status and error trace.
Failures are :class:`~bench.errors.BenchError`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from bench.errors import BenchError
from bench.services import REPO_ROOT

__all__ = ["Connector", "documented_properties"]

CONNECT_DOC = REPO_ROOT / "docs" / "kafka-connect.md"
REST_TIMEOUT = 30.0  # seconds for one REST call
_BLOCK = re.compile(r"<!-- connect: ([\w.-]+) -->\s*```properties\n(.*?)```", re.DOTALL)


def documented_properties(name: str) -> dict[str, str]:
    """The ``properties`` block named ``name`` in docs/kafka-connect.md, as a Java
    Properties file reads it."""
    blocks = dict(_BLOCK.findall(CONNECT_DOC.read_text(encoding="utf-8")))
    if name not in blocks:
        msg = f"docs/kafka-connect.md has no properties block after <!-- connect: {name} -->"
        raise BenchError(msg)
    found: dict[str, str] = {}
    for raw in blocks[name].splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        found[key.strip()] = re.sub(r"\\(.)", r"\1", value.strip())
    return found


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        msg = f"{method} {url} -> HTTP {exc.code}: {detail}"
        raise BenchError(msg) from exc
    return json.loads(text) if text else None


class Connector:
    """One sink connector on the worker at ``rest_url``."""

    def __init__(self, rest_url: str, name: str, config: dict[str, str]) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.name = name
        self.config = {**config, "name": name}

    @property
    def group(self) -> str:
        """The consumer group of a sink connector's tasks (Connect's naming)."""
        return f"connect-{self.name}"

    def create(self) -> None:
        _call("PUT", f"{self.rest_url}/connectors/{self.name}/config", self.config)

    def delete(self) -> None:
        _call("DELETE", f"{self.rest_url}/connectors/{self.name}")

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = _call("GET", f"{self.rest_url}/connectors/{self.name}/status")
        return found

    def topics(self) -> set[str]:
        """The topics the connector has read (Connect's active topics)."""
        found = _call("GET", f"{self.rest_url}/connectors/{self.name}/topics")
        return set(found[self.name]["topics"])

    def failure(self) -> str | None:
        """The connector's or a task's error trace, when one of them failed."""
        try:
            status = self.status()
        except BenchError:
            return None  # not created yet
        for part in [status["connector"], *status.get("tasks", [])]:
            if part.get("state") == "FAILED":
                return str(part.get("trace", part))
        return None

    def wait_until(self, differences: Callable[[], list[str]], timeout: float) -> None:
        """Until ``differences`` (what still differs from the expected target) is empty; a
        failed connector or task fails at once, with its trace."""
        deadline = time.monotonic() + timeout
        found = ["not compared yet"]
        while time.monotonic() < deadline:
            failure = self.failure()
            if failure is not None:
                msg = f"connector {self.name} failed:\n{failure}"
                raise BenchError(msg)
            found = differences()
            if not found:
                return
            time.sleep(1.0)
        shown = "\n  ".join(found[:20])
        msg = (
            f"connector {self.name}: the target still differs from the source after "
            f"{timeout:g}s ({len(found)} differences; status {self.status()}):\n  {shown}"
        )
        raise BenchError(msg)
