"""The sweep's summary: what a pass found, in the words the log and the command use."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from producer.sweep import SweepReport


def test_refused_rows_are_named_as_dead_letters_apart_from_repairs() -> None:
    report = SweepReport(datetime(2026, 12, 7, tzinfo=UTC), tables=["customers", "orders"])
    report.add("customers", Counter(checked=10, repaired=1))
    report.add("orders", Counter(checked=5, deleted=0, refused=1))
    assert report.describe() == (
        "sweep checked 15 rows of 2 tables: customers: 1 repaired; orders: 1 refused (dead letter)"
    )
    assert report.as_dict()["findings"]["orders"] == {
        "checked": 5,
        "deleted": 0,
        "late": 0,
        "repaired": 0,
        "refused": 1,
    }


def test_a_pass_resumed_from_a_report_without_refused_counts_them() -> None:
    """A pass left unfinished by an earlier version holds no "refused" count."""
    report = SweepReport(
        datetime(2026, 12, 7, tzinfo=UTC),
        tables=["orders"],
        findings={"orders": {"checked": 5, "deleted": 0, "late": 1, "repaired": 0}},
    )
    report.add("orders", Counter(checked=5, refused=1))
    assert report.found_in("orders") == "1 late, 1 refused (dead letter)"
