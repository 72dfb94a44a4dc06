"""Connections of the monitor's web server: bounded, with deadlines, no thread per idle client.

The standard library's ThreadingHTTPServer gives each connection a thread for as
long as the client keeps it open, so 200 idle clients hold 200 threads, forever.
Here one thread accepts connections and reads their request heads with a
selector (an idle connection costs a file descriptor, not a thread); a
connection is dropped when its head has not arrived ``timeout`` seconds after it
was accepted (idle and slowloris clients alike); beyond ``max_connections`` open
connections a new one gets a 503 at once and is closed. A complete head goes to a
small pool of ``workers`` threads that answer it (the answers are rendered from a
snapshot the feed already holds, so they are quick); writing to a client that
does not read is bounded by the same timeout. One request per connection
(HTTP/1.0), so a connection's life ends with its answer.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = ["CLIENT_GONE", "ConnectionLimits", "ConnectionServer", "Handle", "SocketWriter"]

log = logging.getLogger("queuestream.monitor.web")

#: ``handle(head, connection, client_address)`` answers one request; it may raise OSError.
Handle: TypeAlias = Callable[[bytes, socket.socket, tuple[str, int]], None]

_HEAD_END = b"\r\n\r\n"
_REFUSED = (
    b"HTTP/1.0 503 Service Unavailable\r\n"
    b"Server: queuestream-monitor\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 42\r\n"
    b"Retry-After: 5\r\n"
    b"Connection: close\r\n\r\n"
    b"too many connections to the monitor page\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
    b"Server: queuestream-monitor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
#: Errors of a client that went away or stalled: worth a DEBUG line, never a traceback.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections may be open, how long each may take, how many threads answer."""

    max_connections: int = 64
    timeout: float = 10.0
    workers: int = 4
    max_head_bytes: int = 16_384


@dataclass(slots=True)
class _Pending:
    connection: socket.socket
    address: tuple[str, int]
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class SocketWriter:
    """A ``wfile`` that sends all it is given (``sendall``; the socket's timeout bounds it)."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection

    def write(self, data: bytes) -> int:
        self._connection.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def _close(connection: socket.socket) -> None:
    try:
        connection.close()
    except OSError:
        pass


class ConnectionServer:
    """Accepts on ``listener`` and hands complete request heads to ``handle`` until ``stop()``."""

    def __init__(self, listener: socket.socket, handle: Handle, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._listener = listener
        self._handle = handle
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._pending: dict[socket.socket, _Pending] = {}
        self._open = 0  # pending + being answered
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="monitor-web")
        self._thread = threading.Thread(target=self._run, name="monitor-web-accept", daemon=True)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def start(self) -> None:
        self._listener.setblocking(False)
        self._wake_read.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(10)
        self._pool.shutdown(wait=True)
        self._selector.close()
        _close(self._listener)
        _close(self._wake_read)
        _close(self._wake_write)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_read:
                        continue
                    else:
                        self._read(key.data)
                self._drop_expired()
        finally:
            for pending in list(self._pending.values()):
                self._forget(pending)

    def _next_timeout(self) -> float:
        if not self._pending:
            return 1.0
        first = min(p.deadline for p in self._pending.values())
        return max(0.0, min(1.0, first - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                connection, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, aborted before accept
                log.debug("monitor page: accept failed: %s", exc)
                return
            connection.setblocking(False)
            with self._lock:
                full = self._open >= self.limits.max_connections
                if not full:
                    self._open += 1
            if full:
                self._refuse(connection, address)
                continue
            pending = _Pending(connection, address, time.monotonic() + self.limits.timeout)
            self._pending[connection] = pending
            self._selector.register(connection, selectors.EVENT_READ, pending)

    def _refuse(self, connection: socket.socket, address: tuple[str, int]) -> None:
        log.debug("monitor page: refused %s: %d connections open", address[0], self._open)
        try:
            connection.recv(65_536)  # what already came, so closing does not reset the 503
        except OSError:
            pass
        try:
            connection.send(_REFUSED)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        _close(connection)

    def _read(self, pending: _Pending) -> None:
        try:
            data = pending.connection.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("monitor page: %s went away: %s", pending.address[0], exc)
            self._forget(pending)
            return
        if not data:
            log.debug("monitor page: %s closed before its request", pending.address[0])
            self._forget(pending)
            return
        pending.head += data
        if _HEAD_END in pending.head:
            self._selector.unregister(pending.connection)
            del self._pending[pending.connection]
            self._pool.submit(self._answer, pending)
        elif len(pending.head) > self.limits.max_head_bytes:
            try:
                pending.connection.send(_TOO_LARGE)
            except OSError:
                pass
            self._forget(pending)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            log.debug("monitor page: %s sent no request in time", pending.address[0])
            self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.connection, None)
        try:
            self._selector.unregister(pending.connection)
        except (KeyError, ValueError):
            pass
        self._closed(pending.connection)

    def _closed(self, connection: socket.socket) -> None:
        # The slot is free before the client sees the close, so its next connection fits.
        with self._lock:
            self._open -= 1
        _close(connection)

    def _answer(self, pending: _Pending) -> None:
        connection = pending.connection
        try:
            connection.settimeout(self.limits.timeout)
            self._handle(bytes(pending.head), connection, pending.address)
        except CLIENT_GONE as exc:
            log.debug("monitor page: %s went away: %s", pending.address[0], exc)
        except OSError as exc:
            log.debug("monitor page: %s: %s", pending.address[0], exc)
        except Exception:
            log.exception("monitor page: answering %s failed", pending.address[0])
        finally:
            self._closed(connection)
