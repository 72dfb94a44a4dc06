"""``python -m schemas.avro.record_history``: add the current .avsc files to the history.

Run it (``make schema-history``) after changing a schema, and commit what it writes.
It writes the entries that are missing (``history/<stem>/<fingerprint>.avsc``) and
leaves the others alone: idempotent, and a change that keeps the canonical form (a
``doc``, a property such as ``connect.name``) has no new entry, as its messages carry
the same fingerprint. It refuses (nothing written, exit status 1) a schema that
cannot read what an earlier version of its stem wrote (BACKWARD: new consumers read
old events) or that an earlier version cannot read (FORWARD: consumers not yet
upgraded read new events); adding a column as nullable with a default is both.
The command lives apart from :mod:`.history`, which the codec imports, so that
``python -m`` runs a module that is not already loaded.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from queuestream.errors import SchemaError
from schemas.avro.history import HISTORY_DIR, fingerprint_of, history, incompatibility
from schemas.avro.schema_files import SCHEMA_DIR

__all__ = ["main", "record"]

log = logging.getLogger(__name__)


def record(schema_dir: Path = SCHEMA_DIR, history_dir: Path = HISTORY_DIR) -> list[Path]:
    """Add the .avsc files of ``schema_dir`` missing from ``history_dir``; the files written.

    A schema is refused (SchemaError, nothing written) when it cannot read an earlier
    version of its stem (BACKWARD: new consumers read old events) or an earlier
    version cannot read it (FORWARD: consumers not yet upgraded read new events).
    """
    known = history(history_dir) if history_dir.is_dir() else {}
    missing: list[tuple[Path, dict[str, Any]]] = []
    for stem in _stems(schema_dir):
        schema = _read(schema_dir, stem)
        hexed = fingerprint_of(schema)
        earlier = known.get(stem, {})
        if hexed in earlier:
            continue
        for old_hex, old in earlier.items():
            for direction, reader, writer in (
                ("BACKWARD", schema, old),
                ("FORWARD", old, schema),
            ):
                why = incompatibility(reader, writer)
                if why is not None:
                    msg = (
                        f"{stem}.avsc ({hexed}) is not {direction} compatible with its released "
                        f"version {old_hex}: {why}; add a column as nullable with a default "
                        '(["null", ...], "default": null) instead'
                    )
                    raise SchemaError(msg)
        missing.append((history_dir / stem / f"{hexed}.avsc", schema))
    for path, schema in missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        log.info("recorded %s", path)
    return [path for path, _ in missing]


def _stems(schema_dir: Path) -> list[str]:
    return sorted(p.name.removesuffix(".avsc") for p in schema_dir.glob("*.avsc"))


def _read(schema_dir: Path, stem: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((schema_dir / f"{stem}.avsc").read_text(encoding="utf-8"))
    return schema


def main(argv: list[str] | None = None) -> int:
    """``python -m schemas.avro.history [SCHEMA_DIR [HISTORY_DIR]]``: record, say what."""
    args = sys.argv[1:] if argv is None else argv
    schema_dir = Path(args[0]) if args else SCHEMA_DIR
    history_dir = Path(args[1]) if len(args) > 1 else schema_dir / "history"
    try:
        written = record(schema_dir, history_dir)
    except SchemaError as exc:
        sys.stderr.write(f"SchemaError: {exc}\n")
        return 1
    for path in written:
        sys.stdout.write(f"recorded {path}\n")
    if not written:
        sys.stdout.write(f"every schema of {schema_dir} is in {history_dir} already\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - the command
    sys.exit(main())
