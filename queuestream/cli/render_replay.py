"""How ``queuestream replay`` shows its plan: a table of moves with notes, or JSON.

Warnings and notes (events a forward move skips, a sample target's offsets left
behind) go to stderr, so that they never mix with the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from queuestream.cli.output import console, err_console, print_json
from queuestream.databases import describe_url

if TYPE_CHECKING:
    from consumers.replay import ReplayPlan
    from queuestream.settings import Settings

__all__ = ["print_replay_plan"]


def print_replay_plan(plan: ReplayPlan, settings: Settings, as_json: bool) -> None:
    """Per topic and partition the group's (and target's) offset and the new one."""
    if as_json:
        print_json(plan.as_dict())
        return
    members = f", {len(plan.members)} active member(s)" if plan.members else ", no active members"
    table = Table(title=f"group {plan.group} ({plan.state}{members}) {plan.destination}")
    table.add_column("topic", no_wrap=True)
    for column in ("part", "group at"):
        table.add_column(column, justify="right")
    if plan.target_url is not None:
        table.add_column("target at", justify="right")
    for column in ("new", "change", "retained"):
        table.add_column(column, justify="right", no_wrap=True)
    for move in plan.moves:
        row = [
            move.topic,
            str(move.partition),
            "-" if move.group_offset is None else str(move.group_offset),
        ]
        if plan.target_url is not None:
            row.append("-" if move.target_offset is None else str(move.target_offset))
        delta = move.delta
        row += [
            str(move.new_offset),
            "-" if delta is None else f"{delta:+d}",
            f"{move.low}..{move.high}",
        ]
        table.add_row(*row)
    console.print(table)
    if plan.skipped:
        where = ", ".join(f"{t}[{p}] {n}" for (t, p), n in sorted(plan.skipped.items()))
        err_console.print(
            f"[bold yellow]warning[/]: moving forward skips {sum(plan.skipped.values())} "
            f"events that the group was not given yet ({where})",
            highlight=False,
        )
    where = f" (and those stored in {describe_url(plan.target_url)})" if plan.target_url else ""
    if plan.executed:
        console.print(f"moved {len(plan.moves)} partitions of group {plan.group}{where}")
    else:
        console.print(
            f"dry run: nothing moved. Add --execute to move the offsets of group "
            f"{plan.group}{where}."
        )
    if plan.target_url is None and any(
        plan.group == settings.group_for(name) for name in ("accounting", "shipping")
    ):
        err_console.print(
            f"note: {plan.group} is a sample target's group, which resumes from the offsets "
            "stored in its database: pass --target URL to move those too"
        )
