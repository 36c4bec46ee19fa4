"""The changes projection against PostgreSQL: one row per known event, plus the device -> site map
that lets observed-state events be filed under their site."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
import msgspec

from projections.changes.model import ChangeRow, DeviceState, change_row, device_after
from projections.runner import Item, Poison, Statement
from projections.sqlrows import RowTable

_COLUMNS = list(ChangeRow.__struct_fields__)
# Rows go over as one JSON array, encoded by msgspec in one call, and are taken apart by PostgreSQL
# (`json_populate_recordset`, `at` parsed there too): the Python side of a write is nearly free,
# and the parsing runs in the server's own process, beside our reading and folding.
_INSERT_SQL = (
    f"INSERT INTO changes ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
    "FROM json_populate_recordset(NULL::changes, $1::json)"
)
_ENCODER = msgspec.json.Encoder()
# Each device's current state (site, and what a fleet diff compares), so the next event about it
# can be filed under its site and carry the device as it stands after it.
STATES = RowTable("device_sites", DeviceState, "device_id", {
    "online": "boolean", "drifted": "boolean", "present": "boolean"})


def _site_of(states: dict[str, DeviceState]) -> Callable[[str], str | None]:
    def site_of(device_id: str) -> str | None:
        state = states.get(device_id)
        return state.site_id or None if state is not None else None

    return site_of


def fold(states: dict[str, DeviceState], item: Item) -> tuple[ChangeRow, DeviceState | None]:
    """One event's change row, and the state of the device it is about (also put in `states`)."""
    event = item.event
    device_id = getattr(event, "device_id", None)
    old = states.get(device_id) if isinstance(device_id, str) else None
    after = device_after(old, event)
    row = change_row(item.seq, item.envelope, event, _site_of(states), after)
    if after is not None:
        states[after.device_id] = after
    return row, after


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
        states = await STATES.load(conn, devices)
        changed: dict[str, DeviceState] = {}
        rows: list[ChangeRow] = []
        for index, item in enumerate(items):
            try:
                row, after = fold(states, item)
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc
            rows.append(row)
            if after is not None:
                changed[after.device_id] = after
        await _insert(conn, rows)
        await STATES.upsert(conn, list(changed.values()))


async def _insert(conn: asyncpg.Connection, rows: Sequence[ChangeRow]) -> None:
    if rows:
        sql, args = insert_statement(rows)
        await conn.execute(sql, *args)


class ChangesBuilder:
    """Change rows made in memory from sequence 1 and written 10,000 at a time."""

    CHUNK = 10_000

    def __init__(self) -> None:
        self.rows: list[ChangeRow] = []
        self.states: dict[str, DeviceState] = {}

    def add(self, items: Sequence[Item], last_seq: int, last_at: str) -> None:
        """Make the rows of a batch."""
        for index, item in enumerate(items):
            try:
                self.rows.append(fold(self.states, item)[0])
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc

    def should_flush(self) -> bool:
        """Enough rows for a few large inserts."""
        return len(self.rows) >= 5 * self.CHUNK

    def take(self, *, final: bool) -> list[Statement]:
        """Inserts of the pending rows, a chunk each; when `final`, of the devices' states too."""
        rows, self.rows = self.rows, []
        out = [insert_statement(rows[start:start + self.CHUNK]) for start in range(0, len(rows), self.CHUNK)]
        if final and self.states:
            states = list(self.states.values())
            out += [STATES.insert_json(states[start:start + self.CHUNK])
                    for start in range(0, len(states), self.CHUNK)]
        return out


def insert_statement(rows: Sequence[ChangeRow]) -> Statement:
    """One INSERT of change rows."""
    return _INSERT_SQL, (_ENCODER.encode(rows).decode(),)
