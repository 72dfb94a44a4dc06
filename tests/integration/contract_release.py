"""Another release of the contract, to run a producer or consumer on, and what it decodes.

A process runs on the contract of the ``schemas`` package it imports: an older or a
newer release of queuestream is another copy of that package (its .avsc files and
history) and of the ``queuestream.sync_schema`` that says which source columns the
producer reads. :func:`release_with_column` writes such a copy, a column added to one
table, into a folder; a command run with that folder first on ``PYTHONPATH`` (and a
working directory outside the repository) imports it instead of this worktree's,
exactly as a process of that release would. No setting selects a contract: no
user runs two contracts from one installation.

``python -m tests.integration.contract_release PREFIX TABLE`` prints, one JSON line
per committed event of ``PREFIX.TABLE``, the framing it was written with and its
``after`` row as this process's contract decodes it (:func:`decoded_rows`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from queuestream.settings import Settings
from schemas.avro import AvroCodec
from schemas.avro.record_history import record
from schemas.avro.schema_files import row_record
from tests.integration.kafka_readback import committed_messages

__all__ = ["REPO_ROOT", "decoded_rows", "release_env", "release_with_column"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_NO_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


def release_with_column(
    folder: Path,
    table: str,
    source_class: str,
    column: dict[str, Any],
    sql_column: str,
    *,
    recorded: bool = True,
) -> Path:
    """A copy of ``schemas`` and ``queuestream`` in ``folder``: ``table``'s row record has
    ``column`` appended (and, when ``recorded``, its schema in the copy's history), the
    model ``source_class`` of the sync schema the line ``sql_column`` (``Name:
    Mapped[...] = mapped_column(...)``). Returns ``folder``, to put first on ``PYTHONPATH``.
    """
    for package in ("schemas", "queuestream"):
        shutil.copytree(REPO_ROOT / package, folder / package, ignore=_NO_CACHES)
    avro = folder / "schemas" / "avro"
    path = avro / f"{table}.value.avsc"
    envelope = json.loads(path.read_text(encoding="utf-8"))
    row_record(envelope)["fields"].append(column)
    path.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    if recorded:
        record(avro, avro / "history")  # as a release does (make schema-history)
    models = folder / "queuestream" / "sync_schema.py"
    text = models.read_text(encoding="utf-8")
    start = text.index(f"class {source_class}(")
    end = text.index("\n\n\n", start)
    models.write_text(f"{text[:end]}\n    {sql_column}{text[end:]}", encoding="utf-8")
    return folder


def release_env(env: dict[str, str], release: Path | None) -> dict[str, str]:
    """``env`` for a command on ``release`` (None: this worktree's contract)."""
    if release is None:
        return env
    return {**env, "PYTHONPATH": str(release)}


def decoded_rows(
    bootstrap: str, prefix: str, table: str, codec: AvroCodec
) -> dict[str, tuple[str, dict[str, Any]]]:
    """``"partition@offset"`` -> (framing in hex, decoded ``after``) of every committed
    event of ``prefix.table``."""
    rows = {}
    for message in committed_messages(bootstrap, [f"{prefix}.{table}"]):
        data = message.value()
        decoded = codec.decode(table, "value", data)
        if data is None or decoded is None or decoded["after"] is None:
            continue
        framing = data[:10] if data[:1] == b"\xc3" else data[:5]
        rows[f"{message.partition()}@{message.offset()}"] = (framing.hex(), decoded["after"])
    return rows


def main() -> None:  # pragma: no cover - run in a process of another release
    prefix, table = sys.argv[1:3]  # prints decoded_rows as JSON
    settings = Settings()
    codec = AvroCodec.from_url(prefix, settings.schema_registry_url)
    rows = decoded_rows(settings.kafka_bootstrap_servers, prefix, table, codec)
    sys.stdout.write(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
