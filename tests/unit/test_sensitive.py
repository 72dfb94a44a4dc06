"""Promise 8: exclude, mask or hash columns before they leave the source."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest

from producer.sensitive import ColumnPolicy, column_policy, mask
from queuestream.errors import ConfigurationError
from queuestream.settings import DEFAULT_SENSITIVE_COLUMNS, load_settings
from schemas.avro import row_schema


def test_account_numbers_are_masked_by_default() -> None:
    apply = ColumnPolicy(DEFAULT_SENSITIVE_COLUMNS).for_table("customer_accounts")
    assert apply is not None
    row = {
        "CustomerID": 7,
        "BankAccountNumber": "1234567890",
        "BankRoutingNumber": "021000021",
        "PrimaryCreditCardNumberDisplay": "4111111111111111",
        "PrimaryBillingName": "Ann",
    }
    apply(row)
    assert row["BankAccountNumber"] == "******7890"
    assert row["PrimaryCreditCardNumberDisplay"] == "************1111"
    assert row["BankRoutingNumber"] == "*****0021"
    assert row["PrimaryBillingName"] == "Ann"


def test_exclude_and_keyed_hash() -> None:
    policy = ColumnPolicy({"customers": {"Email": "hash", "Phone": "exclude"}}, hash_key=b"secret")
    apply = policy.for_table("customers")
    assert apply is not None
    row = {"CustomerID": 1, "Email": "a@example.com", "Phone": "+1-555"}
    apply(row)
    assert row["Phone"] is None
    assert row["Email"] == hmac.new(b"secret", b"a@example.com", hashlib.sha256).hexdigest()
    assert policy.for_table("orders") is None


def test_nulls_stay_null() -> None:
    apply = ColumnPolicy({"customers": {"Email": "mask"}}).for_table("customers")
    assert apply is not None
    row = {"Email": None}
    apply(row)
    assert row["Email"] is None


def test_mask_short_values() -> None:
    assert mask("123") == "***"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"nope": {"X": "mask"}}, "unknown table"),
        ({"customers": {"Nope": "mask"}}, "no column 'Nope'"),
        ({"customers": {"FirstName": "exclude"}}, "not nullable"),
        ({"customers": {"CustomerTypeID": "mask"}}, "not text"),
        ({"customers": {"CustomerID": "hash"}}, "part of the key"),
        ({"customers": {"Email": "shred"}}, "unknown action"),
    ],
)
def test_bad_rules_say_what_to_do(rules: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ColumnPolicy(rules)


@pytest.mark.parametrize(
    ("table", "rules"),
    [
        ("customer_accounts", DEFAULT_SENSITIVE_COLUMNS["customer_accounts"]),
        ("customers", {"Email": "hash", "Phone": "exclude", "LastName": "mask"}),
    ],
)
def test_a_row_given_as_its_values_is_handled_as_the_row(table: str, rules: dict[str, str]) -> None:
    """The producer applies the rules to a row's values in column order (a copy), with
    what the row as a dict gets in place; a value more after them is left alone."""
    policy = ColumnPolicy({table: rules}, hash_key=b"secret")
    columns = [f["name"] for f in row_schema(table)["fields"]]
    row: dict[str, str | None] = {c: f"value of {c} 0123456789" for c in columns}
    row[columns[-1]] = None
    by_name, by_position = policy.for_table(table), policy.for_values(table, columns)
    assert by_name is not None
    assert by_position is not None
    values = [*row.values(), 42]
    handled = by_position(values)
    by_name(row)
    assert handled == [*row.values(), 42]
    assert values[: len(columns)] != handled[: len(columns)]  # a copy: the values as read
    assert policy.for_values("orders", columns) is None


def test_a_setting_that_leaves_out_the_defaults_columns_says_they_are_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``sensitive_columns`` replaces the default whole: naming another table only
    publishes the account numbers in clear, which the producer says at start."""
    with caplog.at_level(logging.WARNING, logger="producer.sensitive"):
        column_policy(load_settings(None))
    assert not caplog.records
    settings = load_settings(
        None,
        sensitive_columns={
            "customers": {"Email": "mask"},
            "customer_accounts": {"BankAccountNumber": "exclude"},
        },
    )
    with caplog.at_level(logging.WARNING, logger="producer.sensitive"):
        apply = column_policy(settings).for_table("customer_accounts")
    [record] = caplog.records
    assert (
        "leaves out customer_accounts.PrimaryCreditCardNumberDisplay, "
        "customer_accounts.BankRoutingNumber: they are published" in record.getMessage()
    )
    assert apply is not None
    row = {"BankAccountNumber": "1234567890", "BankRoutingNumber": "021000021"}
    apply(row)
    assert row == {"BankAccountNumber": None, "BankRoutingNumber": "021000021"}
