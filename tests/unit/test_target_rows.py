"""The record checks both targets share, and the validation of one table's changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from consumers.changes import Change
from consumers.target import ApplyReport
from consumers.target_rows import (
    DecimalRule,
    check_currency,
    check_decimal,
    check_instant,
    check_length,
    check_required,
    text_limit,
    validate,
)
from consumers.target_sql import Money
from queuestream.errors import RecordError
from tests.source_changes import change

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
_AMOUNT: sa.Column[Decimal] = sa.Column("amount", Money(6, 2))
_RULE = DecimalRule.of(_AMOUNT)


def _payment(stamp: datetime = T0, **values: Any) -> Change:
    return change("payments", {"PaymentID": 1, "ModifiedDate": stamp, **values})


@contextmanager
def _fails(column: str, reason: str) -> Iterator[None]:
    """A RecordError naming ``column`` of payment 1, with ``reason``, must be raised."""
    with pytest.raises(RecordError, match=reason) as raised:
        yield
    assert (raised.value.table, raised.value.key) == ("payments", {"PaymentID": 1})
    assert raised.value.column == column


def test_a_record_error_names_table_key_and_column() -> None:
    with pytest.raises(RecordError) as raised:
        check_required(_payment(Amount=None), "Amount", "accounting")
    error = raised.value
    assert (error.table, error.key, error.column) == ("payments", {"PaymentID": 1}, "Amount")
    assert "NULL in a column the accounting target requires" in str(error)


def test_decimal_rule_of_a_money_column() -> None:
    assert (_RULE.precision, _RULE.scale) == (6, 2)
    assert (_RULE.bound, _RULE.quantum) == (Decimal(10000), Decimal("0.01"))


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (Decimal("12.30"), Decimal("12.30")),
        (Decimal("-9999.99"), Decimal("-9999.99")),
        (Decimal("12.3"), Decimal("12.3")),
        (12, Decimal(12)),
        (None, None),
    ],
)
def test_decimals_that_fit(value: Any, found: Any) -> None:
    assert check_decimal(_payment(Amount=value), "Amount", _RULE) == found


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Decimal("10000.00"), "does not fit decimal\\(6,2\\)"),
        (Decimal("0.005"), "more than 2 decimal places"),
        (Decimal("NaN"), "is not a finite decimal"),
        (True, "is not a finite decimal"),
        (1.5, "is not a finite decimal"),
        ("1.50", "is not a finite decimal"),
    ],
)
def test_decimals_that_do_not_fit(value: Any, reason: str) -> None:
    with _fails("Amount", reason):
        check_decimal(_payment(Amount=value), "Amount", _RULE)


def test_a_required_decimal_refuses_null() -> None:
    with _fails("Amount", "NULL in a column the shipping target requires"):
        check_decimal(_payment(Amount=None), "Amount", _RULE, required_by="shipping")


def test_instants_are_aware_and_come_back_in_utc() -> None:
    local = datetime(2024, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    found = check_instant(_payment(PaymentDate=local), "PaymentDate")
    assert found == T0 and found.tzinfo == UTC
    assert check_instant(_payment(PaymentDate=None), "PaymentDate") is None
    with _fails("PaymentDate", "is not a timezone-aware timestamp"):
        check_instant(_payment(PaymentDate=datetime(2024, 3, 1)), "PaymentDate")  # noqa: DTZ001
    with _fails("PaymentDate", "NULL in a column the accounting target requires"):
        check_instant(_payment(PaymentDate=None), "PaymentDate", required_by="accounting")


def test_text_and_currency() -> None:
    assert text_limit(sa.Column("code", sa.String(7))) == 7
    assert check_length(_payment(Code="abc"), "Code", 3) == "abc"
    assert check_length(_payment(Code=None), "Code", 3) is None
    with _fails("Code", "4 characters do not fit the target column of 3"):
        check_length(_payment(Code="abcd"), "Code", 3)
    with _fails("Code", "expected text, got int"):
        check_length(_payment(Code=7), "Code", 3)
    assert check_currency(_payment(CurrencyCode="usd")) == "USD"
    with _fails("CurrencyCode", "'EURO' is not a three-letter ISO 4217 currency code"):
        check_currency(_payment(CurrencyCode="EURO"))


def test_validate_rejects_by_name_and_keeps_the_newest_valid_change_per_key() -> None:
    def to_row(c: Change) -> tuple[Any, ...]:
        return (check_decimal(c, "Amount", _RULE, required_by="accounting"),)

    later = T0 + timedelta(seconds=1)
    good = _payment(T0, Amount=Decimal(1))
    bad_newer = _payment(later, Amount=Decimal("0.001"))
    other = change("payments", {"PaymentID": 2, "ModifiedDate": T0, "Amount": Decimal(2)})
    gone = change("payments", {"PaymentID": 2, "ModifiedDate": later}, op="d")
    report = ApplyReport()

    found = validate("payments", [good, bad_newer, other, gone], to_row, report, ["amount"])

    assert [r.change for r in report.rejected] == [bad_newer]
    assert report.rejected[0].error.column == "Amount"
    assert found.events == 4
    assert found.valid == [good, other, gone]
    assert found.winners == [good, gone]  # a bad newest version hides no good older one
    assert found.row(good) == (Decimal(1),)
    assert found.value(good, "amount") == Decimal(1)
    assert report.applied == Counter()
