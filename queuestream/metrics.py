"""What the producer's and the consumers' Prometheus metrics share: buckets and the server.

The metrics themselves live with what they measure: ``producer/metrics.py``
(:class:`producer.metrics.ProducerMetrics`, fed by the produce loop) and
``consumers/metrics.py`` (:class:`consumers.metrics.ConsumerMetrics`, fed by the
consumer runtime); their docstrings list every metric. This module knows neither:
the command that runs a producer or a consumer wires its metrics object to
:func:`metrics_server`.

``queuestream produce --metrics-port P`` and ``queuestream consume TARGET
--metrics-port P`` (or ``QUEUESTREAM_METRICS_PORT``) serve them at
``http://<metrics_host>:P/metrics``; ``metrics_host`` defaults to 127.0.0.1.
Every metrics object has its own registry, so several runtimes (or tests) in one
process never share figures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, start_http_server

from queuestream.errors import ConfigurationError

__all__ = ["DURATION_BUCKETS", "metrics_server"]

log = logging.getLogger(__name__)

#: Seconds; refreshes and batches range from milliseconds to minutes (a re-sync).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


@contextmanager
def metrics_server(registry: CollectorRegistry, port: int | None, host: str) -> Iterator[None]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the block runs.

    Port 0 or None: no server. A port that cannot be bound is a ConfigurationError.
    """
    if not port:
        yield
        return
    try:
        started = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        msg = (
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another "
            "--metrics-port or metrics_host"
        )
        raise ConfigurationError(msg) from None
    log.info("metrics at %s", _url(host, port))
    try:
        yield
    finally:
        if isinstance(started, tuple):  # prometheus-client >= 0.19 returns (server, thread)
            server, thread = started
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
