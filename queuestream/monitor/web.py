"""The monitor as a web page that refreshes itself, and the snapshot as JSON.

``GET /`` is the HTML page of the feed's latest snapshot
(:mod:`queuestream.monitor.page`: every value escaped, no script, it reloads
itself every ``refresh_seconds``); ``GET /snapshot.json`` is ``{"snapshot": ..., "error": ...}``:
the snapshot's ``as_dict()`` (null before the first) and the last collection's error.
The server is bound where told (``--http 127.0.0.1:8080``; loopback by default)
and stopped by ``stop()``; its connections are bounded and timed out by
:mod:`queuestream.monitor._connections` (no thread per idle client), requests are
parsed by the standard library's BaseHTTPRequestHandler (with no version banner
and no tracebacks for clients that go away), and who may read the page is
decided by :mod:`queuestream.monitor.access` (the optional bearer token).
"""

from __future__ import annotations

import io
import json
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from queuestream.errors import ConfigurationError
from queuestream.monitor._connections import ConnectionLimits, ConnectionServer, SocketWriter
from queuestream.monitor.access import TokenGate, exposure_warning, redact
from queuestream.monitor.alerts import LagLimits
from queuestream.monitor.feed import SnapshotFeed
from queuestream.monitor.page import render_page

__all__ = ["DEFAULT_HOST", "ConnectionLimits", "MonitorServer", "parse_address", "render_page"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); ``[::1]:PORT`` for IPv6."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        msg = f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080"
        raise ConfigurationError(msg)
    return host, number


class _Site:
    """What every request reads: the feed, the lag limits, the reload period, the token gate."""

    def __init__(
        self,
        feed: SnapshotFeed,
        limits: LagLimits,
        refresh_seconds: float,
        gate: TokenGate | None,
    ) -> None:
        self.feed = feed
        self.limits = limits
        self.refresh_seconds = refresh_seconds
        self.gate = gate


_SIGNED_IN = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="0; url={target}"><title>queuestream monitor</title>'
    '</head><body><p><a href="{target}">Continue to the monitor</a></p></body></html>'
)
_UNAUTHORIZED = (
    "This page needs the monitor's token (the file given to --http-token-file).\n"
    "In a browser open /?token=TOKEN once; scripts send Authorization: Bearer TOKEN.\n"
)


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head the connection server has already read."""

    site: _Site

    def __init__(
        self, head: bytes, connection: socket.socket, address: tuple[str, int], site: _Site
    ) -> None:
        self._head = head
        self.site = site
        super().__init__(connection, address, cast("Any", None))

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = cast("Any", SocketWriter(self.connection))

    def finish(self) -> None:
        pass

    def version_string(self) -> str:
        return "queuestream-monitor"  # no Python or BaseHTTP version

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        gate = self.site.gate
        if gate is not None:
            given = parse_qs(url.query).get("token")
            if given is not None:
                if gate.is_token(given[0]):
                    target = path if path in ("/", "/snapshot.json") else "/"
                    page = _SIGNED_IN.format(target=target)
                    self._send(
                        HTTPStatus.OK,
                        "text/html; charset=utf-8",
                        page.encode(),
                        {"Set-Cookie": gate.set_cookie()},
                    )
                else:
                    self._unauthorized('Bearer realm="queuestream monitor", error="invalid_token"')
                return
            if not gate.allows(self.headers.get("Authorization"), self.headers.get("Cookie")):
                self._unauthorized('Bearer realm="queuestream monitor"')
                return
        state = self.site.feed.current()
        if path == "/":
            page = render_page(state, self.site.limits, self.site.refresh_seconds)
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode())
        elif path == "/snapshot.json":
            body: dict[str, Any] = {
                "snapshot": None if state.snapshot is None else state.snapshot.as_dict(),
                "error": state.error,
            }
            self._send(HTTPStatus.OK, "application/json", json.dumps(body).encode())
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

    def _unauthorized(self, challenge: str) -> None:
        self._send(
            HTTPStatus.UNAUTHORIZED,
            "text/plain; charset=utf-8",
            _UNAUTHORIZED.encode(),
            {"WWW-Authenticate": challenge},
        )

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard error page echoes the request line, which may hold a token.
        super().send_error(code)

    def log_message(self, format: str, *args: Any) -> None:
        text = format % args
        gate = self.site.gate
        log.debug("%s %s", self.address_string(), gate.redact(text) if gate else redact(text))


class MonitorServer:
    """Serves the feed at ``host:port`` until ``stop()``, within ``connections`` limits.

    With ``token`` every path needs it (see :mod:`queuestream.monitor.access`). Bound
    beyond localhost, it logs a WARNING saying what the page shows and how to protect it.
    """

    def __init__(
        self,
        address: tuple[str, int],
        feed: SnapshotFeed,
        limits: LagLimits,
        refresh_seconds: float,
        *,
        token: str | None = None,
        connections: ConnectionLimits | None = None,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, port), family=family, backlog=128)
        except OSError as exc:
            msg = f"cannot serve the monitor on {host}:{port}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from None
        self._listener = listener
        self._site = _Site(feed, limits, refresh_seconds, TokenGate(token) if token else None)
        self._connections = ConnectionServer(
            listener, self._answer, connections or ConnectionLimits()
        )
        warning = exposure_warning(self.host, self.url, protected=token is not None)
        if warning:
            log.warning("%s", warning)

    @property
    def host(self) -> str:
        return str(self._listener.getsockname()[0])

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed (waiting for a request or being answered)."""
        return self._connections.open_connections

    def _answer(self, head: bytes, connection: socket.socket, address: tuple[str, int]) -> None:
        _Handler(head, connection, address, self._site)

    def start(self) -> MonitorServer:
        self._connections.start()
        return self

    def stop(self) -> None:
        self._connections.stop()
