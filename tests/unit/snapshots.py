"""Test helpers for the pure rollout domain."""

from __future__ import annotations

import msgspec


class FixedSnapshot(msgspec.Struct):
    """A snapshot whose config hashes the same at every site (`domain.SnapshotView`)."""

    hash: str
    retired: bool = False

    def hash_for_site(self, site: str) -> str:
        return self.hash
