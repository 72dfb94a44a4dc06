"""Where a sweep step's comparison ends when a SQLite key column holds no integer.

The sweep walks each table in key order and compares a chunk at a time with the state,
which keys rows by integers; SQLite sorts text after the numbers. A row whose key is
text can be no chunk's end: the step ends at the chunk's last row with an integer key,
and the next step reads the rest again, so each such row is refused once (by name, when
it is published).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest

from producer.changed_rows import ChangedRow, row_layout
from producer.events import RowPreparer
from producer.partitioning import CustomerPartitioner
from producer.sensitive import column_policy
from producer.sweep import _up_to_last_key
from queuestream.errors import ConfigurationError
from queuestream.settings import load_settings
from queuestream.tables import TABLES_BY_NAME
from schemas.avro import AvroCodec

_SPEC = TABLES_BY_NAME["order_details"]
_LAYOUT = row_layout(_SPEC)


def _preparer() -> RowPreparer:
    settings = load_settings(None)
    return RowPreparer(
        _SPEC,
        AvroCodec.from_url("walk", None),
        column_policy(settings),
        CustomerPartitioner(6),
        ZoneInfo("UTC"),
        None,
        False,
    )


def _line(order: Any, line: Any) -> ChangedRow:
    values: list[Any] = [None] * len(_LAYOUT.columns)
    values[_LAYOUT.key[0]], values[_LAYOUT.key[1]] = order, line
    return ChangedRow(values, 1, _LAYOUT)


def test_a_chunk_ends_at_its_last_row_with_a_key_the_state_can_hold() -> None:
    preparer = _preparer()
    rows = [_line(5, 1), _line(5, 2), _line(5, "x"), _line(5, "y")]
    keys = [preparer.state_key(r) for r in rows]
    assert keys == [(5, 1), (5, 2), None, None]
    kept, kept_keys, upto = _up_to_last_key(_SPEC, preparer, rows, keys)
    assert upto == (5, 2)
    assert kept == rows[:2]
    assert kept_keys == keys[:2]
    # A text key before the end is compared (and refused) in this step.
    rows = [_line(5, "x"), _line(6, 1)]
    keys = [preparer.state_key(r) for r in rows]
    kept, _, upto = _up_to_last_key(_SPEC, preparer, rows, keys)
    assert (kept, upto) == (rows, (6, 1))


def test_a_chunk_with_no_integer_key_stops_the_sweep_naming_a_row() -> None:
    preparer = _preparer()
    rows = [_line(5, "x"), _line(5, "y")]
    with pytest.raises(ConfigurationError) as raised:
        _up_to_last_key(_SPEC, preparer, rows, [None, None])
    message = str(raised.value)
    assert "table order_details, key {'OrderID': 5, 'OrderLine': 'x'}, column OrderLine" in message
    assert "cannot walk past 2 rows of OrderDetails" in message
