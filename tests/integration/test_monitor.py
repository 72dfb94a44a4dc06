"""``queuestream monitor`` against a real broker: lag, the last batch, --check, --json, the page.

Refreshes are Kafka transactions, so a caught-up group's committed offsets sit
below the log end (commit markers): it must still show lag 0. A group that does
not consume must show the new events as lag, and lag in seconds that grows.
The web page is read in headless Chromium (Debian's ``chromium``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuestream.monitor import GroupInfo, LagLimits, Snapshot, SnapshotCollector, breaches
from tests.helpers import wait_for
from tests.integration.pipeline import Pipeline
from tests.services import REPO_ROOT, free_ports

QUEUESTREAM = str(REPO_ROOT / ".venv" / "bin" / "queuestream")
RUN_TIMEOUT = 120
PAGE_TIMEOUT_MS = 30_000
SERVER_START_TIMEOUT = 60
SERVER_STOP_TIMEOUT = 30
CHROMIUM = os.environ.get("QUEUESTREAM_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "artifacts" / "monitor.png"
ACCOUNTING_TOPICS = ("customers", "orders", "order_details", "payments")


def _group(snapshot: Snapshot, name: str) -> GroupInfo:
    group = snapshot.group(name)
    assert group is not None, f"group {name} not in {[g.name for g in snapshot.groups]}"
    return group


def _collect(pipe: Pipeline) -> Snapshot:
    collector = SnapshotCollector(pipe.settings())
    try:
        return collector.collect()
    finally:
        collector.close()


def _cli(pipe: Pipeline, *args: str) -> list[str]:
    return [
        QUEUESTREAM,
        "--bootstrap-servers",
        pipe.bootstrap,
        "--topic-prefix",
        pipe.prefix,
        "monitor",
        *args,
    ]


def _run(pipe: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(pipe, *args),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "QUEUESTREAM_TRANSACTIONAL_ID": f"{pipe.prefix}-producer"},
    )


def _lags(group: dict[str, Any] | GroupInfo) -> dict[tuple[str, int], int]:
    if isinstance(group, GroupInfo):
        return {(p.topic, p.partition): p.lag_messages for p in group.partitions}
    return {(p["topic"], p["partition"]): p["lag_messages"] for p in group["partitions"]}


def test_caught_up_group_shows_no_lag_and_the_last_batch(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.simulate(60)
    [result] = pipeline.refresh()
    pipeline.consume("accounting", f"sqlite:///{tmp_path / 'accounting.db'}")
    snapshot = _collect(pipeline)
    group = _group(snapshot, f"queuestream-{pipeline.prefix}-accounting")
    assert group.topics == [f"{pipeline.prefix}.{t}" for t in ACCOUNTING_TOPICS]
    assert len(group.partitions) == 4 * 3
    for lag in group.partitions:
        assert (lag.lag_messages, lag.lag_seconds, lag.exact) == (0, 0.0, True), lag
    # The commit markers are there: committed offsets one below the log end.
    behind = [p for p in group.partitions if p.committed is not None and p.committed < p.end]
    assert behind, "expected committed offsets below the log end (transaction markers)"
    assert group.state == "empty" and group.members == 0

    batch = snapshot.last_batch
    assert batch is not None
    assert batch.refresh_id == result.refresh_id
    assert batch.event_count == result.events
    assert {t: n for t, n in batch.counts.items() if n} == {
        t: n for t, n in result.counts.items() if n
    }
    assert batch.watermark == result.window_end
    assert batch.watermark_age_seconds is not None and batch.watermark_age_seconds >= 0
    topics = {t.name: t for t in snapshot.topics}
    orders = topics[f"{pipeline.prefix}.orders"]
    assert len(orders.partitions) == 3
    assert orders.rate_per_second > 0  # written within the last minute
    assert orders.oldest_time is not None and orders.oldest_time <= snapshot.taken_at
    assert topics[f"{pipeline.prefix}.batches"].role == "batches"
    assert snapshot.dead_letters == ()


@pytest.mark.slow
def test_stopped_group_lags_by_the_new_events_and_check_fails(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    name = f"queuestream-{pipeline.prefix}-accounting"
    pipeline.simulate(40)
    pipeline.refresh()
    pipeline.consume("accounting", f"sqlite:///{tmp_path / 'accounting.db'}")
    assert _run(pipeline, "--check", "--max-lag", "0").returncode == 0

    pipeline.simulate(40)
    [result] = pipeline.refresh()  # not consumed
    expected = {
        (f"{pipeline.prefix}.{table}", partition): count
        for (table, partition), count in result.partition_counts.items()
        if table in ACCOUNTING_TOPICS
    }
    first = _group(_collect(pipeline), name)
    lags = _lags(first)
    assert {k: v for k, v in lags.items() if v} == {k: v for k, v in expected.items() if v}
    assert sum(lags.values()) == sum(expected.values()) > 0
    lagging = [p for p in first.partitions if p.lag_messages]
    assert all(p.exact and p.lag_seconds is not None for p in lagging)
    # Lag in seconds is the age of the first unconsumed event: it grows while the group waits.
    grown = wait_for(
        lambda: _group(_collect(pipeline), name).lag_seconds > first.lag_seconds + 1.0,
        timeout=30,
        interval=0.5,
        message="lag seconds to grow",
    )
    assert grown
    snapshot = _collect(pipeline)
    assert _lags(_group(snapshot, name)) == lags
    assert {b.group for b in breaches(snapshot, LagLimits(max_messages=0))} == {name}

    checked = _run(pipeline, "--check", "--max-lag", "0")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert name in checked.stdout and "lag" in checked.stdout
    relaxed = _run(pipeline, "--check", "--max-lag", "100000", "--max-lag-seconds", "3600")
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    missing = _run(pipeline, "--check", "--max-lag", "0", "--group", "no-such-group")
    assert missing.returncode == 2 and "no-such-group" in missing.stdout

    done = _run(pipeline, "--once", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    [group] = [g for g in data["groups"] if g["name"] == name]
    assert _lags(group) == lags
    assert group["lag_seconds"] > first.lag_seconds
    assert data["last_batch"]["refresh_id"] == result.refresh_id
    assert snapshot.last_batch is not None
    assert data["last_batch"]["counts"] == snapshot.last_batch.counts
    assert data["prefix"] == pipeline.prefix


# --- the web page ----------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the playwright package is missing: .venv/bin/pip install -e '.[test]'", pytrace=False
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package "
            "(apt-get install chromium), or point QUEUESTREAM_TEST_CHROMIUM at one",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"], timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def monitor_server(pipeline: Pipeline) -> Iterator[str]:
    """``queuestream monitor --http 127.0.0.1:PORT --interval 2``; stopped with SIGTERM."""
    [port] = free_ports(1)
    process = subprocess.Popen(
        _cli(pipeline, "--http", f"127.0.0.1:{port}", "--interval", "2"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QUEUESTREAM_TRANSACTIONAL_ID": f"{pipeline.prefix}-producer"},
    )
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        assert process.poll() is None, f"monitor exited: {process.communicate()}"
        with urllib.request.urlopen(f"{url}snapshot.json", timeout=5) as response:
            return json.load(response)["snapshot"] is not None

    try:
        wait_for(answers, SERVER_START_TIMEOUT, 0.2, "the monitor's page", ignore=(OSError,))
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=SERVER_STOP_TIMEOUT)
            pytest.fail(f"the monitor did not stop on SIGTERM: {err}")
    assert process.returncode == 0, f"monitor exited {process.returncode}: {err}"
    assert f"monitor page at {url}" in err, out + err


@pytest.mark.slow
def test_web_page_in_chromium_shows_lag_and_refreshes_itself(
    pipeline: Pipeline, tmp_path: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    name = f"queuestream-{pipeline.prefix}-accounting"
    pipeline.simulate(40)
    [first] = pipeline.refresh()
    pipeline.consume("accounting", f"sqlite:///{tmp_path / 'accounting.db'}")
    pipeline.simulate(30)
    [second] = pipeline.refresh()  # not consumed: the group lags
    lagging = {table: 0 for table in ACCOUNTING_TOPICS}  # new events per topic
    for (table, _), count in second.partition_counts.items():
        if table in lagging:
            lagging[table] += count
    assert first.refresh_id != second.refresh_id and sum(lagging.values()) > 0

    with monitor_server(pipeline) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=PAGE_TIMEOUT_MS)
        expect(page).to_have_title(f"queuestream monitor · {pipeline.prefix}")
        expect(page.locator("#refresh-id")).to_have_text(second.refresh_id)
        rows = page.locator(f'#groups tr[data-group="{name}"]')
        expect(rows).to_have_count(len(ACCOUNTING_TOPICS))
        expect(rows.first.locator("td.group")).to_have_text(name)
        for table, count in lagging.items():
            row = page.locator(
                f'#groups tr[data-group="{name}"][data-topic="{pipeline.prefix}.{table}"]'
            )
            expect(row.locator("td.lag-messages")).to_have_text(str(count))
        expect(page.locator("#groups tr.lagging").first).to_be_visible()
        expect(page.locator("#summary")).to_contain_text(pipeline.prefix)
        expect(page.locator("#topics")).to_contain_text(f"{pipeline.prefix}.order_details")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.wait_for_load_state("load")
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # The group catches up and another refresh commits: the page shows both by itself.
        pipeline.consume("accounting", f"sqlite:///{tmp_path / 'accounting.db'}")
        pipeline.simulate(20)
        [third] = pipeline.refresh()
        pipeline.consume("accounting", f"sqlite:///{tmp_path / 'accounting.db'}")
        expect(page.locator("#refresh-id")).to_have_text(third.refresh_id, timeout=PAGE_TIMEOUT_MS)
        expect(page.locator(f'#groups tr.ok[data-group="{name}"]')).to_have_count(
            len(ACCOUNTING_TOPICS), timeout=PAGE_TIMEOUT_MS
        )
        for table in ACCOUNTING_TOPICS:
            row = page.locator(
                f'#groups tr[data-group="{name}"][data-topic="{pipeline.prefix}.{table}"]'
            )
            expect(row.locator("td.lag-messages")).to_have_text("0")
        page.close()
