"""How ``queuestream refresh`` and ``sweep`` show their results: a few lines, or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

from queuestream.cli.output import console, print_json

if TYPE_CHECKING:
    from producer.refresh import RefreshResult
    from producer.sweep import SweepReport

__all__ = ["print_refresh_results", "print_sweep_report"]


def print_refresh_results(results: list[RefreshResult], as_json: bool) -> None:
    """Per refresh: its window, events and seconds, then each table's count and ops."""
    if as_json:
        print_json([r.as_dict() for r in results])
        return
    if not results:
        console.print("nothing to publish")
    for result in results:
        window = (
            f"{result.window_start:%Y-%m-%d %H:%M:%S} → {result.window_end:%Y-%m-%d %H:%M:%S} UTC"
            if result.window_start and result.window_end
            else "queue tables"
        )
        label = " (republished after a crash)" if result.recovered else ""
        console.print(
            f"refresh {result.refresh_id}{label}: {window}, {result.events} events "
            f"in {result.seconds:.2f}s"
        )
        for table, count in result.counts.items():
            ops = ", ".join(
                f"{k.split('.')[1]} {v}"
                for k, v in sorted(result.op_counts.items())
                if k.startswith(f"{table}.")
            )
            console.print(f"  {table:<18} {count:>8}" + (f"  ({ops})" if ops else ""))
        if result.overlap_skipped:
            console.print(f"  overlap duplicates skipped: {result.overlap_skipped}")


def print_sweep_report(report: SweepReport, as_json: bool) -> None:
    """The pass's summary, then per table what it checked and found."""
    if as_json:
        print_json(report.as_dict())
        return
    console.print(report.describe())
    for table, found in report.findings.items():
        said = report.found_in(table)
        console.print(
            f"  {table:<18} {found['checked']:>8} checked" + (f", {said}" if said else "")
        )
