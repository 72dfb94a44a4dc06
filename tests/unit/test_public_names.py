"""Every module states its public names in __all__, and each of them exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["queuestream", "producer", "consumers", "schemas"]


def _modules() -> list[str]:
    found = set(PACKAGES)
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                found.add(info.name)
    return sorted(found)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects: {missing}"


def test_the_version_is_one_and_the_changelog_names_it() -> None:
    import tomllib
    from pathlib import Path

    import queuestream

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert queuestream.__version__ == declared
    assert f"## {declared} " in (root / "CHANGELOG.md").read_text()
