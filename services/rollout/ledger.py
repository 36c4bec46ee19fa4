"""A persistent array for per-device bookkeeping: a fixed number of slots in a tree of tuples
three levels deep (blocks of leaves of slots, each level about ∛size wide). A new version that
changes some slots copies the leaves, blocks and top tuple on their paths, and shares every other
leaf and block with the version it came from; neither version changes afterwards.

This is what lets the rollout aggregate be an immutable value at a million devices. Its devices
are indexed by their position in the plan, and a chunk of 999 assignments takes consecutive
positions: folding it copies ten leaves of 100 slots, one or two blocks and the top (about 1,300
pointers), where a copy of a dict of every device would copy a million entries per chunk; one
device taken by a later rollout copies about 300. A ledger is a plain msgspec value: a checkpoint
encodes and decodes it as nested arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")
MIN_WIDTH = 8


class Ledger(msgspec.Struct, Generic[T], frozen=True, array_like=True, gc=False):
    """`size` slots, each a T or None: `blocks` of `width` leaves of `width` slots (the last of
    each shorter when the size is not a multiple); `filled` counts the slots not None."""

    size: int = 0
    width: int = MIN_WIDTH
    blocks: tuple[tuple[tuple[T | None, ...], ...], ...] = ()
    filled: int = 0

    @classmethod
    def empty(cls, size: int) -> Ledger[T]:
        """`size` empty slots (the empty leaves are one shared tuple)."""
        width = MIN_WIDTH
        while width**3 < size:
            width += 1
        full, rest = divmod(size, width)
        leaves = [(None,) * width] * full + ([(None,) * rest] if rest else [])
        return cls(size, width, tuple(tuple(leaves[i:i + width]) for i in range(0, len(leaves), width)))

    def __len__(self) -> int:
        return self.size

    def _path(self, index: int) -> tuple[int, int, int]:
        """(block, leaf, slot) of a slot index."""
        if not 0 <= index < self.size:
            raise IndexError(f"slot {index} is outside 0..{self.size - 1}")
        block, rest = divmod(index, self.width * self.width)
        return (block, *divmod(rest, self.width))

    def __getitem__(self, index: int) -> T | None:
        block, leaf, slot = self._path(index)
        return self.blocks[block][leaf][slot]

    def __iter__(self) -> Iterator[T | None]:
        return chain.from_iterable(chain.from_iterable(self.blocks))

    def values(self, start: int, stop: int) -> Iterator[T | None]:
        """The slots from `start` up to `stop`, in order."""
        first = start // (self.width * self.width)
        skipped = first * self.width * self.width
        return islice(chain.from_iterable(chain.from_iterable(self.blocks[first:])), start - skipped, stop - skipped)

    def updated(self, changes: Iterable[tuple[int, T | None]]) -> Ledger[T]:
        """A new ledger with `(slot, value)` changes applied in order (this one is left as it was)."""
        draft = _Draft(self)
        for index, value in changes:
            slots, slot = draft.leaf(index)
            draft.filled += (value is not None) - (slots[slot] is not None)
            slots[slot] = value
        return draft.ledger()

    def changed(self, indexes: Iterable[int], change: Callable[[int, T], T]) -> Ledger[T]:
        """A new ledger where each of the slots named that holds a value holds `change(slot, value)`."""
        draft = _Draft(self)
        for index in indexes:
            slots, slot = draft.leaf(index)
            value = slots[slot]
            if value is not None:
                slots[slot] = change(index, value)
        return draft.ledger()


class _Draft(Generic[T]):
    """The leaves a new version changes, as lists, until they are sealed into it."""

    def __init__(self, base: Ledger[T]) -> None:
        self.base = base
        self.filled = base.filled
        self.leaves: dict[int, list[T | None]] = {}  # by leaf number (block * width + leaf)

    def leaf(self, index: int) -> tuple[list[T | None], int]:
        """The (writable) leaf holding slot `index`, and the slot's place in it (the arithmetic of
        `Ledger._path`, kept inline: this runs once per device of a chunk)."""
        base = self.base
        if not 0 <= index < base.size:
            raise IndexError(f"slot {index} is outside 0..{base.size - 1}")
        number, slot = divmod(index, base.width)
        slots = self.leaves.get(number)
        if slots is None:
            block, leaf = divmod(number, base.width)
            slots = self.leaves[number] = list(base.blocks[block][leaf])
        return slots, slot

    def ledger(self) -> Ledger[T]:
        """The new version: the changed leaves, their blocks and the top copied; the rest shared."""
        base = self.base
        if not self.leaves:
            return base
        blocks: dict[int, list[tuple[T | None, ...]]] = {}
        for number, slots in self.leaves.items():
            block, leaf = divmod(number, base.width)
            if block not in blocks:
                blocks[block] = list(base.blocks[block])
            blocks[block][leaf] = tuple(slots)
        top = list(base.blocks)
        for block, leaves in blocks.items():
            top[block] = tuple(leaves)
        return Ledger(base.size, base.width, tuple(top), self.filled)
