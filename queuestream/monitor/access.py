"""Who may read the monitor page: the optional bearer token, and a warning when it is exposed.

The page shows topic names, consumer groups and their lag, so beyond localhost it
wants protecting. ``--http-token-file PATH`` reads a token from a file (as
container secrets are mounted; never from the command line, where ``ps`` shows
it). Scripts send ``Authorization: Bearer <token>``. A browser cannot add that
header to a page that reloads itself, so it opens ``/?token=<token>`` once: the
answer sets an HttpOnly, SameSite=Strict cookie and reloads the page without the
token in its address. The cookie holds an HMAC of the token, not the token, so
a leaked cookie does not give away the token scripts use. Every comparison is
``hmac.compare_digest``; the token never appears in a log line, page or message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from queuestream.errors import ConfigurationError

__all__ = [
    "COOKIE_NAME",
    "MIN_TOKEN_LENGTH",
    "TokenGate",
    "exposure_warning",
    "is_loopback",
    "read_token_file",
    "redact",
]

log = logging.getLogger(__name__)

COOKIE_NAME = "queuestream_monitor"
MIN_TOKEN_LENGTH = 16
_TOKEN_PARAMETER = re.compile(r"(?i)(token=)[^&\s\"']*")


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); names the file, never the token."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"--http-token-file {path}: cannot read it: {reason}"
        raise ConfigurationError(msg) from None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        msg = (
            f"--http-token-file {path}: the token must be at least {MIN_TOKEN_LENGTH} "
            "characters without spaces; make one with: openssl rand -hex 32 > FILE"
        )
        raise ConfigurationError(msg)
    return token


class TokenGate:
    """Decides whether a request carries the token, in its Authorization header or cookie."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        mac = hmac.new(self._token, b"queuestream monitor cookie", hashlib.sha256)
        self._cookie = mac.hexdigest().encode()

    def is_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def allows(self, authorization: str | None, cookie_header: str | None) -> bool:
        if authorization:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and self.is_token(credentials.strip()):
                return True
        if cookie_header:
            try:
                cookies = SimpleCookie(cookie_header)
            except CookieError:
                return False
            morsel = cookies.get(COOKIE_NAME)
            if morsel is not None:
                return hmac.compare_digest(morsel.value.encode(), self._cookie)
        return False

    def set_cookie(self) -> str:
        """The ``Set-Cookie`` value that lets a browser in (for the life of the browser)."""
        return f"{COOKIE_NAME}={self._cookie.decode()}; Path=/; HttpOnly; SameSite=Strict"

    def redact(self, text: str) -> str:
        return redact(text).replace(self._token.decode(), "***")

    def __repr__(self) -> str:
        return "TokenGate(***)"


def redact(text: str) -> str:
    """``text`` with any ``token=...`` query parameter's value replaced by ``***``."""
    return _TOKEN_PARAMETER.sub(r"\1***", text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address as bound) is in 127.0.0.0/8 or is ::1."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def exposure_warning(host: str, url: str, protected: bool) -> str | None:
    """The warning for a page bound at ``host`` beyond localhost; None on loopback."""
    if is_loopback(host):
        return None
    if protected:
        return (
            f"the monitor page at {url} is reachable from other hosts; it requires the "
            "bearer token, but over plain HTTP the token and the page (topic names, "
            "consumer groups and their lag) cross the network unencrypted: put a "
            "TLS-terminating reverse proxy in front of it, or bind to 127.0.0.1"
        )
    return (
        f"the monitor page at {url} is reachable from other hosts and shows topic names, "
        "consumer groups and their lag to anyone who can connect: protect it with "
        "--http-token-file PATH (and TLS through a reverse proxy) or a firewall, "
        "or bind to 127.0.0.1"
    )
