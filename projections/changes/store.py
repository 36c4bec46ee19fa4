"""The changes projection against PostgreSQL: one row per known event, plus the device -> site map
that lets observed-state events be filed under their site."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

import asyncpg

from projections.changes.model import ChangeRow, change_row, site_change
from projections.runner import Item, Poison

_COLUMNS = list(ChangeRow.__struct_fields__)
_INSERT_SQL = (
    f"INSERT INTO changes ({', '.join(_COLUMNS)}) SELECT "
    + ", ".join("at::timestamptz" if c == "at" else c for c in _COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i}::{'bigint' if c == 'seq' else 'text'}[]" for i, c in enumerate(_COLUMNS, 1))
    + f") AS u({', '.join(_COLUMNS)})"
)
_SITES_SQL = (
    "INSERT INTO device_sites (device_id, site_id) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT (device_id) DO UPDATE SET site_id = EXCLUDED.site_id"
)


class ChangesProjection:
    """changes (+ device_sites)."""

    name = "changes"
    migrations = Path(__file__).parent / "migrations"

    def builder(self) -> ChangesBuilder:
        """A rebuild in memory, written in large chunks."""
        return ChangesBuilder()

    async def apply_batch(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        """Append one change row per event."""
        devices = {item.event.device_id for item in items if hasattr(item.event, "device_id")}
        sites: dict[str, str] = {}
        if devices:
            records = await conn.fetch(
                "SELECT device_id, site_id FROM device_sites WHERE device_id = ANY($1::text[])",
                list(devices))
            sites = {r["device_id"]: r["site_id"] for r in records}
        moved: dict[str, str] = {}
        rows: list[ChangeRow] = []
        for index, item in enumerate(items):
            try:
                rows.append(change_row(item.seq, item.envelope, item.event, sites.get))
                placed = site_change(item.event)
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc
            if placed is not None:
                sites[placed[0]] = moved[placed[0]] = placed[1]
        await _insert(conn, rows)
        if moved:
            await conn.execute(_SITES_SQL, list(moved), list(moved.values()))


async def _insert(conn: asyncpg.Connection, rows: Sequence[ChangeRow]) -> None:
    if rows:
        await conn.execute(_INSERT_SQL, *([getattr(r, c) for r in rows] for c in _COLUMNS))


def _parse_at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class ChangesBuilder:
    """Change rows made in memory from sequence 1 and written 10,000 at a time."""

    CHUNK = 10_000

    def __init__(self) -> None:
        self.rows: list[ChangeRow] = []
        self.sites: dict[str, str] = {}

    def add(self, items: Sequence[Item], last_seq: int, last_at: str) -> None:
        """Make the rows of a batch."""
        for index, item in enumerate(items):
            try:
                self.rows.append(change_row(item.seq, item.envelope, item.event, self.sites.get))
                placed = site_change(item.event)
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc
            if placed is not None:
                self.sites[placed[0]] = placed[1]

    def should_flush(self) -> bool:
        """Enough rows for a few large inserts."""
        return len(self.rows) >= 5 * self.CHUNK

    def take(self, *, final: bool) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        """A writer of the pending rows; when `final`, of the device -> site map too."""
        rows, self.rows = self.rows, []
        sites = dict(self.sites) if final else {}

        async def write(conn: asyncpg.Connection) -> None:
            # COPY into the fresh table (nothing to conflict with); `at` goes over as a datetime.
            records = [tuple(_parse_at(r.at) if c == "at" else getattr(r, c) for c in _COLUMNS) for r in rows]
            if records:
                await conn.copy_records_to_table("changes", columns=_COLUMNS, records=records)
            if sites:
                await conn.execute(_SITES_SQL, list(sites), list(sites.values()))

        return write
