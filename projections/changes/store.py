"""The changes projection against PostgreSQL: one row per known event, plus the device -> site map
that lets observed-state events be filed under their site."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec

from projections.changes.model import ChangeRow, change_row, site_change
from projections.runner import Item, Poison, Statement

_COLUMNS = list(ChangeRow.__struct_fields__)
# Rows go over as one JSON array, encoded by msgspec in one call, and are taken apart by PostgreSQL
# (`json_populate_recordset`, `at` parsed there too): the Python side of a write is nearly free,
# and the parsing runs in the server's own process, beside our reading and folding.
_INSERT_SQL = (
    f"INSERT INTO changes ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
    "FROM json_populate_recordset(NULL::changes, $1::json)"
)
_ENCODER = msgspec.json.Encoder()
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
        sql, args = insert_statement(rows)
        await conn.execute(sql, *args)


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

    def take(self, *, final: bool) -> list[Statement]:
        """Inserts of the pending rows, a chunk each; when `final`, of the device -> site map too."""
        rows, self.rows = self.rows, []
        out = [insert_statement(rows[start:start + self.CHUNK]) for start in range(0, len(rows), self.CHUNK)]
        if final and self.sites:
            out.append((_SITES_SQL, (list(self.sites), list(self.sites.values()))))
        return out


def insert_statement(rows: Sequence[ChangeRow]) -> Statement:
    """One INSERT of change rows."""
    return _INSERT_SQL, (_ENCODER.encode(rows).decode(),)
