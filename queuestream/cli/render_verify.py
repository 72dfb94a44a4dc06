"""How ``queuestream verify`` shows a reconciliation: a table per target table, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from queuestream.cli.output import console, print_json

if TYPE_CHECKING:
    from consumers.reconcile import Reconciliation

__all__ = ["print_reconciliation"]

_COLUMNS = ("table", "rows (target/source)", "sums (target/source)", "checksum", "result")


def print_reconciliation(target: str, report: Reconciliation, as_json: bool) -> None:
    """Rows, sums and checksums target vs source, the differing keys, then the verdict."""
    if as_json:
        print_json(report.as_dict())
        return
    table = Table(title=f"{target}: target vs source")
    for column in _COLUMNS:
        table.add_column(column)
    for check in report.checks:
        sums = "; ".join(
            f"{name} {check.actual_sums.get(name)}/{value}"
            for name, value in check.expected_sums.items()
        )
        same = check.expected_checksum == check.actual_checksum
        table.add_row(
            check.table,
            f"{check.actual_rows}/{check.expected_rows}",
            sums or "-",
            check.actual_checksum
            if same
            else f"{check.actual_checksum} != {check.expected_checksum}",
            "[green]equal[/]" if check.ok else "[bold red]DIFFERENT[/]",
        )
    console.print(table)
    for check in report.checks:
        for label, keys in (
            ("missing in target", check.missing),
            ("not in source", check.unexpected),
            ("different", check.different),
        ):
            if keys:
                console.print(
                    f"  {check.table}: {label}: {', '.join(map(str, keys))}", highlight=False
                )
    console.print(
        f"{target}: [green]verified equal to the source[/]"
        if report.ok
        else f"{target}: [bold red]differs from the source[/]"
    )
