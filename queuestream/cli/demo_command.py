"""``queuestream demo``: the whole way once, from a simulated source to two verified targets.

The demo is the one command that wires the producer and both sample consumers
together; :mod:`queuestream.demo` does the work and prints its own story.
"""

from __future__ import annotations

from typing import Annotated

import typer

from queuestream.cli.options import check_at_least, command_settings
from queuestream.cli.output import console

__all__ = ["demo"]


def demo(
    actions: Annotated[int, typer.Option(help="Simulated actions before the refresh.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Simulate, refresh into Kafka, apply to both sample targets, verify them."""
    from queuestream.demo import run_demo

    check_at_least(actions, 1, "--actions")
    run_demo(command_settings(), actions=actions, seed=seed, console=console)
