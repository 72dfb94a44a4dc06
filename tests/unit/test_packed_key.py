"""The refresh keeps the keys of the lines it published packed in one int each
(producer.state_changelog.packed_key, which also keys the local state): two different
keys never pack alike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from producer.state_changelog import packed_key

_INT = st.integers(-(1 << 31), (1 << 31) - 1)  # the contract's int: 32 bits, signed


@given(a=st.tuples(_INT, _INT), b=st.tuples(_INT, _INT))
def test_packing_is_one_to_one(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (packed_key(a) == packed_key(b)) == (a == b)


def test_keys_that_differ_only_in_the_sign_of_a_part_pack_apart() -> None:
    keys = [(1, -1), (1, 1), (-1, 1), (-1, -1), (0, -1), (-1, 0), (1, 0), (0, 1)]
    assert len({packed_key(k) for k in keys}) == len(keys)
