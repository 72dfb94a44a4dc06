"""The compiled Avro readers and writers (schemas/avro/_creader.c, _cwriter.c) in tests."""

from __future__ import annotations

import os

import pytest

__all__ = ["need_built"]


def need_built(available: bool, module: str) -> None:
    """``module`` is built and turned on (``available``): a failure under CI (which builds
    it), else a skip (a machine without a C compiler at install)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{module} is not built (pip install -e . compiles it)")
    pytest.skip(f"{module} is not built: no C compiler at install")
