"""``queuestream monitor --http ... --http-token-file`` against a real broker, in headless Chromium.

The page and /snapshot.json answer 401 without the token; a script gets in with
``Authorization: Bearer``; a browser opens ``/?token=`` once, lands on ``/``
without the token in its address and keeps reloading itself with the cookie.
The monitor runs with ``--verbose`` (request lines are logged at DEBUG) and its
whole output is searched for the token.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import stop_gracefully, wait_for
from tests.integration.pipeline import Pipeline
from tests.integration.test_monitor import (
    PAGE_TIMEOUT_MS,
    QUEUESTREAM,
    SERVER_START_TIMEOUT,
    SERVER_STOP_TIMEOUT,
    browser,
)
from tests.services import free_ports

__all__ = ["browser"]  # the fixture, shared with test_monitor

TOKEN = "integration-monitor-token-5f0c1d2e3b4a"


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_page_needs_the_token_and_works_with_it_in_chromium(
    pipeline: Pipeline, tmp_path: Path, browser: Any
) -> None:
    from playwright.sync_api import expect

    pipeline.simulate(20)
    [result] = pipeline.refresh()
    token_file = tmp_path / "monitor-token"
    token_file.write_text(TOKEN + "\n")
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}/"
    out_path, err_path = tmp_path / "monitor.out", tmp_path / "monitor.err"
    command = [
        QUEUESTREAM,
        "--verbose",
        "--bootstrap-servers",
        pipeline.bootstrap,
        "--topic-prefix",
        pipeline.prefix,
        "monitor",
        "--http",
        f"127.0.0.1:{port}",
        "--http-token-file",
        str(token_file),
        "--interval",
        "1",
    ]
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:

        def answers() -> bool:
            assert process.poll() is None, err_path.read_text()
            status, body = _get(f"{url}snapshot.json", TOKEN)
            return status == 200 and json.loads(body)["snapshot"] is not None

        wait_for(answers, SERVER_START_TIMEOUT, 0.2, "the monitor's page", ignore=(OSError,))
        for path in ("", "snapshot.json"):
            status, body = _get(url + path)
            assert status == 401 and b"--http-token-file" in body, (status, body)
            assert _get(url + path, TOKEN + "x")[0] == 401
        assert _get(url, TOKEN)[0] == 200

        stranger = browser.new_context()
        response = stranger.new_page().goto(url, timeout=PAGE_TIMEOUT_MS)
        assert response is not None and response.status == 401
        stranger.close()

        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}?token={TOKEN}", timeout=PAGE_TIMEOUT_MS)
        expect(page).to_have_url(url, timeout=PAGE_TIMEOUT_MS)  # the token left the address
        expect(page).to_have_title(f"queuestream monitor · {pipeline.prefix}")
        expect(page.locator("#refresh-id")).to_have_text(result.refresh_id)
        [cookie] = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        # The page reloads itself every second, with the cookie: a newer snapshot shows.
        taken = page.locator("#taken-at").inner_text()
        expect(page.locator("#taken-at")).not_to_have_text(taken, timeout=PAGE_TIMEOUT_MS)
        expect(page.locator("#refresh-id")).to_have_text(result.refresh_id)
        page.get_by_text("snapshot.json").click()
        expect(page).to_have_url(f"{url}snapshot.json", timeout=PAGE_TIMEOUT_MS)
        assert json.loads(page.locator("body").inner_text())["snapshot"]["prefix"] == (
            pipeline.prefix
        )
        context.close()
    finally:
        if not stop_gracefully(process, SERVER_STOP_TIMEOUT):
            pytest.fail(f"the monitor did not stop on SIGTERM:\n{err_path.read_text()[-4000:]}")
    output = out_path.read_text() + err_path.read_text()
    assert process.returncode == 0, output
    assert f"monitor page at {url}" in output
    assert "token=***" in output  # request lines are logged, with the token redacted
    assert TOKEN not in output
    assert "Traceback" not in output
