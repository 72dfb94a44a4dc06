"""The keys read on every row (a producer's row, a consumer's change) are the key columns'
values in the key's order, as the generator expressions they replaced made them."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.changed_rows import row_layout
from queuestream.tables import TABLES
from tests.source_changes import change

_STAMP = datetime(2026, 12, 8, tzinfo=UTC)
_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=3))


@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
@given(data=st.data())
def test_a_rows_key_is_its_key_columns_values_in_order(spec: Any, data: st.DataObject) -> None:
    layout = row_layout(spec)
    values = data.draw(
        st.lists(_VALUES, min_size=len(layout.columns) + 1, max_size=len(layout.columns) + 1)
    )
    assert layout.key_of(values) == tuple(values[i] for i in layout.key)
    assert layout.key_of(values) == tuple(values[layout.columns.index(k)] for k in spec.key)


@given(first=st.integers(), second=st.integers())
def test_a_changes_key_tuple_follows_the_columns_asked(first: int, second: int) -> None:
    row = {"OrderID": first, "OrderLine": second, "ModifiedDate": _STAMP, "CreatedDate": _STAMP}
    line = change("order_details", row)
    assert line.key_tuple(("OrderID",)) == (first,)
    assert line.key_tuple(("OrderID", "OrderLine")) == (first, second)
    assert line.key_tuple(("OrderLine", "OrderID")) == (second, first)


@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
def test_a_layout_pickles_with_its_key_getter(spec: Any) -> None:
    layout = row_layout(spec)
    again = pickle.loads(pickle.dumps(layout))
    assert again == layout
    values = list(range(len(layout.columns)))
    assert again.key_of(values) == layout.key_of(values)
