"""The packages depend on each other in one direction only.

``queuestream/`` is the shared core: it imports neither side, except the command
layer (``queuestream/cli/`` and ``queuestream/demo.py``), which wires both.
``consumers/`` imports nothing from ``producer/``, and ``producer/`` nothing from
``consumers/``. ``schemas/`` (the contract) imports only the core. Read from the
source with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> first-party packages it must never import
FORBIDDEN = {
    "queuestream": {"producer", "consumers"},
    "producer": {"consumers"},
    "consumers": {"producer"},
    "schemas": {"producer", "consumers"},
}
#: the command layer: the one place allowed to wire producer and consumers together
COMMAND_LAYER = ("queuestream/cli/", "queuestream/demo.py")


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules() -> list[Path]:
    paths = [p for package in FORBIDDEN for p in sorted((ROOT / package).rglob("*.py"))]
    return [p for p in paths if not p.relative_to(ROOT).as_posix().startswith(COMMAND_LAYER)]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_import_against_the_direction(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    wrong = _imported(path) & FORBIDDEN[package]
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from producer.refresh import Refresher\n")
    assert "producer" in _imported(probe)
