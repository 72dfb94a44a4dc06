"""Prometheus metrics of the real commands, scraped over HTTP while they run.

``queuestream produce --metrics-port P`` publishes what the topics hold; its
watermark age stays small while refreshes commit and grows while a source
transaction holds the watermark back. ``queuestream consume accounting
--metrics-port P`` counts what its sync log says it applied, and its lag is 0
when caught up and above 0 while new events wait for a locked target.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from queuestream.databases import create_engine
from tests.helpers import Samples, scrape_metrics, stop_gracefully, wait_for
from tests.integration.kafka_readback import committed_changes
from tests.integration.pipeline import Pipeline
from tests.services import free_ports

COMMAND = [sys.executable, "-m", "queuestream.cli"]
START_TIMEOUT = 60  # seconds: the command is up, connected and has done its first work
CATCH_UP_TIMEOUT = 60  # seconds: the consumer applied what was published
STOP_TIMEOUT = 60  # seconds: SIGTERM finishes the work in hand and exits
SCRAPE_TIMEOUT = 5  # seconds per HTTP request
#: After a refresh commits, its watermark is at most about this old (interval 0.5 s).
SMALL_AGE_SECONDS = 10.0
#: How long a source transaction holds the watermark back in the growth test.
HOLD_SECONDS = 3.0


def _env(source_url: str, bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "QUEUESTREAM_SOURCE_URL": source_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "QUEUESTREAM_TOPIC_PREFIX": prefix,
        "QUEUESTREAM_TRANSACTIONAL_ID": f"{prefix}-producer",
        "QUEUESTREAM_SETTLE_SECONDS": "0",
        "QUEUESTREAM_PARTITIONS": "3",
        "QUEUESTREAM_RETRY_BACKOFF_SECONDS": "0.5",
    }


@contextmanager
def _running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """The command in the background; SIGTERM when the block ends, and it must exit 0."""
    with log.open("w") as output:
        process = subprocess.Popen(
            [*COMMAND, *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield process
            assert process.poll() is None, f"exited early:\n{log.read_text()}"
        finally:
            stop_gracefully(process, STOP_TIMEOUT)
    assert process.returncode == 0, log.read_text()


def _by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples keyed by the values of ``labels``."""
    found = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            named = dict(pairs)
            found[tuple(named[label] for label in labels)] = value
    return found


def _scraped(port: int, process: subprocess.Popen[str], log: Path) -> Samples:
    """A scrape, failing at once (with the command's output) if the command died."""
    if process.poll() is not None:
        msg = f"the command exited with {process.returncode}:\n{log.read_text()}"
        raise AssertionError(msg)
    return scrape_metrics(port, SCRAPE_TIMEOUT)


def _when(
    port: int, process: subprocess.Popen[str], log: Path, ready: Callable[[Samples], bool]
) -> Callable[[], Samples]:
    """For wait_for: a scrape once ``ready`` holds for it, else nothing (falsy)."""

    def condition() -> Samples:
        samples = _scraped(port, process, log)
        return samples if ready(samples) else {}

    return condition


def test_producer_metrics_match_the_topics(
    pipeline: Pipeline, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    pipeline.simulate(150)
    [port] = free_ports(1)
    env = _env(pipeline.source_url, kafka_bootstrap, unique)
    log = tmp_path / "produce.log"
    args = ["produce", "--interval", "0.5", "--metrics-port", str(port)]
    with _running(args, env, log) as process:

        def published(samples: Samples) -> bool:
            events = _by(samples, "queuestream_events_published_total", "table", "op")
            refreshes = samples.get(("queuestream_refreshes_total", ()), 0)
            return sum(events.values()) > 0 and refreshes >= 2

        samples = wait_for(
            _when(port, process, log, published),
            timeout=START_TIMEOUT,
            interval=0.2,
            message="the producer's metrics show a published refresh and a later one",
            ignore=(OSError,),  # not listening yet
        )
        assert f"metrics at http://127.0.0.1:{port}/metrics" in log.read_text()
        _, values = committed_changes(kafka_bootstrap, unique)
        on_topics = Counter((table, value["op"]) for table, _, value in values)
        events = _by(samples, "queuestream_events_published_total", "table", "op")
        assert {k: v for k, v in events.items() if v} == dict(on_topics)
        refreshes = samples[("queuestream_refreshes_total", ())]
        assert samples[("queuestream_refresh_duration_seconds_count", ())] == refreshes
        assert 0 <= samples[("queuestream_watermark_age_seconds", ())] < SMALL_AGE_SECONDS
        assert _by(samples, "queuestream_refresh_errors_total", "error") == {}

        # The source is idle: refreshes go on committing (no events), and the
        # watermark keeps up with the clock.
        later = wait_for(
            _when(
                port,
                process,
                log,
                lambda s: s[("queuestream_refreshes_total", ())] >= refreshes + 2,
            ),
            timeout=START_TIMEOUT,
            interval=0.2,
            message="two more refreshes",
        )
        assert _by(later, "queuestream_events_published_total", "table", "op") == events
        watermark = ("queuestream_watermark_timestamp_seconds", ())
        assert later[watermark] > samples[watermark]
        assert 0 <= later[("queuestream_watermark_age_seconds", ())] < SMALL_AGE_SECONDS


def test_watermark_age_grows_while_a_source_transaction_holds_it(
    postgres_url: str, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """PostgreSQL: an open transaction bounds the watermark; the age shows it."""
    pipeline = Pipeline(postgres_url, kafka_bootstrap, unique)
    try:
        pipeline.simulate(30)
    finally:
        pipeline.close()
    [port] = free_ports(1)
    env = _env(postgres_url, kafka_bootstrap, unique)
    env["QUEUESTREAM_PG_CLOCK_ALLOWANCE_SECONDS"] = "0"
    log = tmp_path / "produce.log"
    age = ("queuestream_watermark_age_seconds", ())
    refreshes = ("queuestream_refreshes_total", ())
    with _running(["produce", "--interval", "0.5", "--metrics-port", str(port)], env, log) as proc:
        wait_for(
            lambda: _scraped(port, proc, log).get(refreshes, 0) >= 1,
            timeout=START_TIMEOUT,
            interval=0.2,
            message="the first refresh",
            ignore=(OSError,),
        )
        holder = create_engine(postgres_url)
        try:
            with holder.connect() as conn, conn.begin():
                conn.execute(sa.text("SELECT 1"))  # a transaction in flight: xact_start is set
                held = _scraped(port, proc, log)
                grown = wait_for(
                    _when(
                        port,
                        proc,
                        log,
                        lambda s: (
                            s[refreshes] >= held[refreshes] + 2
                            and s[age] >= held[age] + HOLD_SECONDS
                        ),
                    ),
                    timeout=START_TIMEOUT,
                    interval=0.2,
                    message="refreshes go on while the watermark age grows",
                )
                assert grown[age] >= HOLD_SECONDS
            # committed: the next refresh takes the watermark up to the clock
            wait_for(
                lambda: _scraped(port, proc, log)[age] < SMALL_AGE_SECONDS / 2,
                timeout=START_TIMEOUT,
                interval=0.2,
                message="the watermark catches up once the transaction ends",
            )
        finally:
            holder.dispose()


def test_consumer_metrics_match_the_sync_log_and_show_lag(
    pipeline: Pipeline, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    target_path = tmp_path / "accounting.db"
    # A write waits 1 s (not SQLite's 30 s) for the lock this test takes below, then the
    # consumer counts an outage and retries, observing its lag between the attempts.
    target_url = f"sqlite:///{target_path}?timeout=1"
    pipeline.simulate(150)
    pipeline.refresh()
    [port] = free_ports(1)
    env = _env(pipeline.source_url, kafka_bootstrap, unique)
    log = tmp_path / "consume.log"
    topics = {f"{unique}.{t}" for t in ("customers", "orders", "order_details", "payments")}
    owned = {(topic, str(p)) for topic in topics for p in range(3)}
    args = ["consume", "accounting", "--target", target_url, "--metrics-port", str(port)]

    def sync_log_counts() -> dict[tuple[str, str], float]:
        counts: Counter[tuple[str, str]] = Counter()
        for entry in pipeline.sync_log("accounting", target_url):
            for name, rows in entry["counts"].items():
                table, op = name.split(".")
                counts[(table, op)] += rows
        return dict(counts)

    with _running(args, env, log) as process:

        def caught_up(samples: Samples) -> bool:
            lag = _by(samples, "queuestream_consumer_lag_messages", "topic", "partition")
            applied = _by(samples, "queuestream_events_applied_total", "target", "table", "op")
            expected = sync_log_counts() if target_path.exists() else {}
            return (
                set(lag) == owned
                and not any(lag.values())
                and bool(expected)
                and {k[1:]: v for k, v in applied.items()} == expected
            )

        samples = wait_for(
            _when(port, process, log, caught_up),
            timeout=CATCH_UP_TIMEOUT,
            interval=0.3,
            message="the applied counts equal the sync log's and the lag is 0 everywhere",
            ignore=(OSError, sa.exc.OperationalError),
        )
        assert {k[0] for k in _by(samples, "queuestream_events_applied_total", "target")} == {
            "accounting"
        }
        batches = samples[("queuestream_batch_duration_seconds_count", (("target", "accounting"),))]
        assert batches >= 1
        assert samples[("queuestream_apply_errors_total", (("target", "accounting"),))] == 0
        assert samples[("queuestream_target_outages_total", (("target", "accounting"),))] == 0

        # New events while the target is locked: read, not applied, so they are lag.
        locker = sqlite3.connect(target_path, timeout=5, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            pipeline.simulate(40)
            pipeline.refresh()
            behind = wait_for(
                lambda: sum(
                    _by(
                        _scraped(port, process, log),
                        "queuestream_consumer_lag_messages",
                        "topic",
                        "partition",
                    ).values()
                ),
                timeout=CATCH_UP_TIMEOUT,
                interval=0.2,
                message="lag above 0 while new events wait for the locked target",
            )
            assert behind > 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(
            _when(port, process, log, caught_up),
            timeout=CATCH_UP_TIMEOUT,
            interval=0.3,
            message="caught up again once the target is unlocked",
            ignore=(OSError, sa.exc.OperationalError),
        )
