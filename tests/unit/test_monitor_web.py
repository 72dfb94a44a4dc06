"""The monitor page's server with raw sockets: connection limits, timeouts, banner, token.

The server runs in this process on a free 127.0.0.1 port with a stub feed (no Kafka):
the snapshot is injected, so each test is about the connections, not the data.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuestream.errors import ConfigurationError
from queuestream.monitor.access import is_loopback, read_token_file
from queuestream.monitor.alerts import LagLimits
from queuestream.monitor.feed import FeedState, SnapshotFeed
from queuestream.monitor.web import ConnectionLimits, MonitorServer
from tests.helpers import run_cli, wait_for
from tests.services import free_ports
from tests.unit.test_monitor import _snapshot

TOKEN = "s3cret-monitor-token-0123456789abcdef"
QUICK = 2.0  # seconds: "at once" for an answer, a refusal or a close


class _StubFeed:
    """A feed that always holds one snapshot; ``delay`` slows every request down."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self._state = FeedState(_snapshot(), None, 1)

    def current(self) -> FeedState:
        if self.delay:
            time.sleep(self.delay)
        return self._state


@contextlib.contextmanager
def serving(
    host: str = "127.0.0.1",
    token: str | None = None,
    feed: _StubFeed | None = None,
    **limits: float,
) -> Iterator[MonitorServer]:
    [port] = free_ports(1)
    stub: SnapshotFeed = feed or _StubFeed()  # type: ignore[assignment]
    connections = ConnectionLimits(**limits)  # type: ignore[arg-type]
    server = MonitorServer(
        (host, port), stub, LagLimits(), 1, token=token, connections=connections
    ).start()
    try:
        yield server
    finally:
        server.stop()


def _port(server: MonitorServer) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


def _connect(server: MonitorServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=QUICK)
    sock.settimeout(QUICK)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (b"" for a close or reset without an answer)."""
    data = b""
    try:
        while chunk := sock.recv(65_536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _request(server: MonitorServer, path: str = "/", *headers: str) -> tuple[int, str, bytes]:
    """Status, head and body of ``GET path`` sent over a raw socket."""
    with _connect(server) as sock:
        lines = [f"GET {path} HTTP/1.1", "Host: localhost", *headers, "", ""]
        sock.sendall("\r\n".join(lines).encode())
        data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


def _header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def _threads() -> int:
    return threading.active_count()


# --- connections -----------------------------------------------------------------


def test_idle_connections_hold_no_thread_and_new_clients_are_served_or_refused_at_once() -> None:
    before = _threads()
    with serving(max_connections=8, timeout=30, workers=2) as server:
        idle = [_connect(server) for _ in range(7)]
        try:
            wait_for(lambda: server.open_connections == 7, QUICK, 0.02, "7 open connections")
            started = time.monotonic()
            status, _, body = _request(server, "/snapshot.json")
            assert status == 200 and b'"snapshot"' in body
            assert time.monotonic() - started < QUICK, "a new client waited behind idle ones"
            # Now 8 idle: every further client is refused at once, not queued.
            idle.append(_connect(server))
            wait_for(lambda: server.open_connections == 8, QUICK, 0.02, "8 open connections")
            for _ in range(40):
                started = time.monotonic()
                with _connect(server) as extra:
                    with contextlib.suppress(OSError):  # it may be refused before this
                        extra.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    answer = _read_all(extra)
                assert time.monotonic() - started < QUICK
                assert answer == b"" or answer.startswith(b"HTTP/1.0 503"), answer[:80]
                idle.append(_connect(server))  # and more idle ones beyond the cap
            # One accepting thread and at most two workers, whatever the number of clients.
            assert _threads() <= before + 3, f"{_threads() - before} threads for 48 idle clients"
            assert server.open_connections == 8
        finally:
            for sock in idle:
                sock.close()
    assert _threads() <= before + 1


def test_idle_and_slowloris_connections_are_closed_after_the_timeout() -> None:
    with serving(timeout=0.6) as server:
        idle = _connect(server)
        slow = _connect(server)
        started = time.monotonic()
        slow.sendall(b"GET / HTTP/1.0\r\n")
        # A header byte every 0.2 s never completes the head: the deadline is the whole head's.
        for _ in range(10):
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.2)
        assert _read_all(slow) == b""
        assert _read_all(idle) == b""
        assert time.monotonic() - started < 0.6 + QUICK
        wait_for(lambda: server.open_connections == 0, QUICK, 0.02, "connections closed")
        assert _request(server)[0] == 200


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that went away does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_go_away_leave_no_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(feed=_StubFeed(delay=0.2), workers=4, timeout=1) as server:
        for _ in range(12):
            sock = _connect(server)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            _reset(sock)  # gone before the answer is written
        half = _connect(server)
        half.sendall(b"GET /snapshot.json HTTP/1.0\r\n")  # never finishes its request
        half.shutdown(socket.SHUT_WR)
        wait_for(lambda: server.open_connections == 0, 10, 0.05, "connections closed")
        half.close()
        assert _request(server)[0] == 200
    out, err = capfd.readouterr()
    logged = caplog.text
    assert "Traceback" not in logged + out + err, logged + err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], logged
    assert "went away" in logged  # at DEBUG


# --- banner ------------------------------------------------------------------------


def test_no_version_banner() -> None:
    with serving() as server:
        for path in ("/", "/snapshot.json", "/nothing"):
            _, head, body = _request(server, path)
            assert _header(head, "Server") == "queuestream-monitor", head
            assert "python" not in (head + body.decode()).lower()
        for request, code in ((b"POST / HTTP/1.0", "501"), (b"GET / HTTP/1.0 extra", "400")):
            with _connect(server) as sock:  # the standard error pages
                sock.sendall(request + b"\r\n\r\n")
                answer = _read_all(sock).decode()
            assert f"Error code: {code}" in answer, answer
            assert "python" not in answer.lower() and "basehttp" not in answer.lower()
            if code == "501":  # (a request line it cannot read is answered without a head)
                assert answer.startswith("HTTP/1.0 501"), answer
                assert "Server: queuestream-monitor\r\n" in answer


# --- exposure ----------------------------------------------------------------------


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "fe80::1"):
        assert not is_loopback(host), host


def test_binding_beyond_localhost_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with serving("127.0.0.1"):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with serving("0.0.0.0") as server:
        assert _request(server)[0] == 200
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "0.0.0.0" in text and "topic names, consumer groups and their lag" in text
    assert "--http-token-file" in text and "127.0.0.1" in text
    caplog.clear()
    with serving("0.0.0.0", token=TOKEN):
        pass
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "requires the bearer token" in warning.getMessage()
    assert "TLS" in warning.getMessage() and TOKEN not in warning.getMessage()


# --- token -------------------------------------------------------------------------


def test_token_is_required_by_page_and_json(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(token=TOKEN) as server:
        for path in ("/", "/snapshot.json", "/nothing"):
            status, head, body = _request(server, path)
            assert status == 401, head
            assert (_header(head, "WWW-Authenticate") or "").startswith("Bearer"), head
            assert b"snapshot" not in body and b"exigo" not in body
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
            assert _request(server, "/", f"Authorization: {wrong}")[0] == 401, wrong
        status, _, body = _request(server, "/snapshot.json", f"Authorization: Bearer {TOKEN}")
        assert status == 200 and b'"prefix": "exigo"' in body
        status, _, body = _request(server, "/", f"Authorization: bearer {TOKEN}")
        assert status == 200 and b"queuestream-exigo-accounting" in body

        # A browser: ?token= once sets a cookie (not the token) and reloads without it.
        status, head, body = _request(server, f"/?token={TOKEN}")
        assert status == 200, head
        cookie = _header(head, "Set-Cookie") or ""
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
        assert b'content="0; url=/"' in body
        pair = cookie.split(";", 1)[0]
        assert _request(server, "/", f"Cookie: {pair}")[0] == 200
        assert _request(server, "/snapshot.json", f"Cookie: other=1; {pair}")[0] == 200
        assert _request(server, "/", f"Cookie: {pair}0")[0] == 401
        assert _request(server, "/", f"Cookie: {pair.split('=')[0]}={TOKEN}")[0] == 401
        status, head, _ = _request(server, "/?token=wrong-token-wrong-token")
        assert status == 401 and _header(head, "Set-Cookie") is None
        # A malformed request line holding the token is not echoed back.
        with _connect(server) as sock:
            sock.sendall(f"GET /?token={TOKEN} x HTTP/1.0\r\n\r\n".encode())
            answer = _read_all(sock).decode()
        assert "Error code: 400" in answer and TOKEN not in answer
        everything = "".join(
            _request(server, "/", f"Cookie: {pair}")[1] + _request(server, "/")[1] for _ in range(2)
        )
        assert TOKEN not in everything and TOKEN not in cookie
    out, err = capfd.readouterr()
    assert "token=***" in caplog.text  # the request lines are logged, redacted
    for text in (caplog.text, out, err, str(server.__dict__)):
        assert TOKEN not in text


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_token_file(path) == TOKEN
    path.write_text("short\n")
    with pytest.raises(ConfigurationError, match="at least 16") as short:
        read_token_file(path)
    assert "short" not in str(short.value).replace("short\n", "")
    assert "openssl rand" in str(short.value)
    with pytest.raises(ConfigurationError, match="cannot read it") as missing:
        read_token_file(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(missing.value)


def test_token_file_mistakes_stop_the_command_before_it_connects(tmp_path: Path) -> None:
    # Port 1 of a broker that is not there: the mistake must be reported before any connection.
    nowhere = ["--bootstrap-servers", "127.0.0.1:1", "monitor"]
    short = tmp_path / "short"
    short.write_text("abc\n")
    for args, expected in (
        (["--http-token-file", str(short)], "give --http HOST:PORT too"),
        (["--http", "127.0.0.1:0", "--http-token-file", str(short)], "at least 16"),
        (["--http", "127.0.0.1:0", "--http-token-file", str(tmp_path / "none")], "cannot read"),
    ):
        started = time.monotonic()
        result = run_cli([*nowhere, *args], timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "abc" not in result.stdout + result.stderr
        assert time.monotonic() - started < 30
