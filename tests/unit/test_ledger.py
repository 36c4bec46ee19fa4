"""The rollout's persistent array against a plain list: every version reads as the list would, and
no later change shows through an earlier version."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.rollout.ledger import Ledger

changes = st.lists(st.tuples(st.integers(0, 10_000), st.one_of(st.none(), st.integers(0, 9))), max_size=50)


@given(size=st.integers(0, 3_000), rounds=st.lists(st.tuples(st.booleans(), changes), max_size=6))
def test_every_version_reads_as_a_list_and_keeps_its_values(
        size: int, rounds: list[tuple[bool, list[tuple[int, int | None]]]]) -> None:
    ledger: Ledger[int] = Ledger.empty(size)
    model: list[int | None] = [None] * size
    versions = [(ledger, list(model))]
    for set_values, round_ in rounds:
        applied = [(index % size, value) for index, value in round_] if size else []
        if set_values:  # `updated`: these values in these slots
            for index, value in applied:
                model[index] = value
            ledger = ledger.updated(applied)
        else:  # `changed`: the slots named that hold a value get value * 10 + slot % 7 (once each)
            named = dict.fromkeys(index for index, _ in applied)
            for index in named:
                current = model[index]
                if current is not None:
                    model[index] = current * 10 + index % 7
            ledger = ledger.changed(named, lambda index, value: value * 10 + index % 7)
        versions.append((ledger, list(model)))
    for version, expected in versions:
        assert list(version) == expected
        assert len(version) == size
        assert version.filled == sum(v is not None for v in expected)
        assert [version[i] for i in range(size)] == expected
        if size:
            start, stop = size // 3, size - size // 4
            assert list(version.values(start, stop)) == expected[start:stop]


def test_a_change_shares_every_leaf_and_block_it_does_not_touch() -> None:
    ledger: Ledger[int] = Ledger.empty(1_000_000)
    assert ledger.width == 100  # blocks of 100 leaves of 100 slots
    changed = ledger.updated((position, 1) for position in range(19_500, 20_499))  # a chunk over two blocks
    assert [n for n, (a, b) in enumerate(zip(ledger.blocks, changed.blocks, strict=True)) if a is not b] == [1, 2]
    assert [n for n, (a, b) in enumerate(zip(ledger.blocks[1], changed.blocks[1], strict=True)) if a is not b] == [
        95, 96, 97, 98, 99]
    assert changed[20_498] == 1 and ledger[20_498] is None and changed[20_499] is None
    assert changed.updated([]) is changed


def test_out_of_range_is_refused_and_a_checkpoint_decodes_it_whole() -> None:
    ledger: Ledger[int] = Ledger[int].empty(100).updated([(3, 7), (99, 1)])
    with pytest.raises(IndexError, match=r"slot 100 is outside 0\.\.99"):
        ledger.updated([(100, 1)])
    with pytest.raises(IndexError):
        ledger[-1]
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(ledger), type=Ledger[int])
    assert decoded == ledger
    assert list(decoded) == list(ledger)
