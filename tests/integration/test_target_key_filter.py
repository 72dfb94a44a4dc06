"""The targets' key filter on PostgreSQL: exactly its keys, with one array parameter.

On SQLite the filter is an IN list (tests/unit/test_target_sql.py); on PostgreSQL it
is ``= ANY(:keys)`` with an array typed as the column's unbounded type, so that a
text key longer than its VARCHAR(n) column is not cut to n characters (and does not
match the row holding its prefix), and a BIGINT key past 2**31 is not refused.
"""

from __future__ import annotations

from tests.unit.test_target_sql import check_key_filter


def test_the_key_filter_selects_exactly_its_keys_on_postgresql(postgres_url: str) -> None:
    check_key_filter(postgres_url)
