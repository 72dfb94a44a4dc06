"""``python -m queuestream.cli``: the same command as the ``queuestream`` console script."""

from __future__ import annotations

from queuestream.cli import main

main()
