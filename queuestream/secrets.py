"""Secrets in settings: read from files as container secrets are mounted, and masked.

``kafka_secret_files`` and ``source_password_file`` / ``target_password_file`` (see
:mod:`queuestream.settings`) are read here, once, when the settings are built; a
missing or empty file is an error naming the setting and the path, never the
content. :func:`hide_secrets` is what the settings' repr shows instead of a value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["hide_secrets", "read_secret", "with_password"]

_SECRET_WORDS = ("password", "secret", "token", ".pem", "jaas")


def read_secret(setting: str, path: Path) -> str:
    """The content of a secret file, without the trailing newline editors add nor the
    byte-order mark some write first (it would become the password's first character)."""
    try:
        value = path.read_bytes().decode("utf-8-sig").rstrip("\r\n")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        msg = f"{setting}: cannot read {path} ({reason}): check the path"
        raise ValueError(msg) from None
    except UnicodeDecodeError:
        msg = f"{setting}: {path} is not UTF-8 text: save it as UTF-8"
        raise ValueError(msg) from None
    if not value:
        msg = f"{setting}: {path} is empty: it should hold the secret"
        raise ValueError(msg)
    return value


def with_password(setting: str, url: str, password: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        msg = f"{setting} is not a database URL, so a password file cannot be applied to it"
        raise ValueError(msg) from None
    return parsed.set(password=password).render_as_string(hide_password=False)


def hide_secrets(name: str | None, value: Any) -> Any:
    """``value`` as the settings' repr may show it: passwords and secret options masked."""
    if name in ("source_url", "target_url") and isinstance(value, str):
        try:
            return make_url(value).render_as_string(hide_password=True)
        except ArgumentError:
            return "***"
    if name == "kafka" and isinstance(value, dict):
        return {
            k: "***" if any(word in k.lower() for word in _SECRET_WORDS) else v
            for k, v in value.items()
        }
    return value
