"""The fleet projection against PostgreSQL: load the rows a batch touches, fold the batch over them
with the pure model, write back changed rows and counter deltas (same transaction as the
checkpoint, which the runner owns)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg

from projections.fleet import model, snapshots
from projections.fleet.model import (
    COUNTER_FIELDS,
    PROGRESS_FIELDS,
    DeviceRow,
    FleetState,
    RolloutRow,
    SiteRow,
    SnapshotRow,
)
from projections.runner import Item, Poison, Statement
from projections.sqlrows import RowTable

DEVICES = RowTable("devices", DeviceRow, "device_id", {
    "labels": "jsonb", "metadata": "jsonb", "registered": "boolean", "retired": "boolean",
    "desired_revision": "integer", "online": "boolean", "stuck": "boolean", "acknowledged": "boolean",
    "reconcile_attempts": "integer", "updated_seq": "bigint", "rollout_wave": "integer"})
SITES = RowTable("sites", SiteRow, "site_id", {
    "labels": "jsonb", "metadata": "jsonb", "retired": "boolean", "updated_seq": "bigint"})
SNAPSHOTS = RowTable("snapshots", SnapshotRow, "snapshot_id", {
    "version": "integer", "artifacts": "jsonb", "known_good_targets": "jsonb", "retired": "boolean",
    "updated_seq": "bigint"})
ROLLOUTS = RowTable("rollouts", RolloutRow, "rollout_id", {
    "wave": "integer", "counts": "jsonb", "last_gate": "jsonb", "updated_seq": "bigint", "wave_sizes": "jsonb",
    "apply_timeout_seconds": "double precision"})
TABLES: dict[str, RowTable[Any]] = {"devices": DEVICES, "sites": SITES, "snapshots": SNAPSHOTS, "rollouts": ROLLOUTS}

_COUNTS_SQL = (
    "INSERT INTO device_counts (site_id, snapshot_id, " + ", ".join(COUNTER_FIELDS) + ") "
    "SELECT * FROM unnest($1::text[], $2::text[], "
    + ", ".join(f"${i}::bigint[]" for i in range(3, 3 + len(COUNTER_FIELDS))) + ") "
    "ON CONFLICT (site_id, snapshot_id) DO UPDATE SET "
    + ", ".join(f"{f} = device_counts.{f} + EXCLUDED.{f}" for f in COUNTER_FIELDS)
)
_PROGRESS_SQL = (
    "INSERT INTO rollout_progress (rollout_id, wave, " + ", ".join(PROGRESS_FIELDS) + ") "
    "SELECT * FROM unnest($1::text[], $2::integer[], "
    + ", ".join(f"${i}::bigint[]" for i in range(3, 3 + len(PROGRESS_FIELDS))) + ") "
    "ON CONFLICT (rollout_id, wave) DO UPDATE SET "
    + ", ".join(f"{f} = rollout_progress.{f} + EXCLUDED.{f}" for f in PROGRESS_FIELDS)
)


class FleetProjection:
    """devices, device_counts, sites, snapshots, rollouts."""

    name = "fleet"
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, snapshot_every: int | None = None, full_every: int = snapshots.FULL_EVERY) -> None:
        self.snapshot_every = snapshot_every  # point-in-time copies while rebuilding
        self.full_every = full_every  # of those, every full_every-th a full one (the others deltas)

    def builder(self) -> FleetBuilder:
        """A rebuild in memory: fold the whole log, then write every row once."""
        from projections.runner import version_of

        return FleetBuilder(version_of(self), self.snapshot_every, full_every=self.full_every)

    async def apply_batch(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        """Fold `items` over the rows they touch and write the result back."""
        wanted: dict[str, set[str]] = {table: set() for table in TABLES}
        for item in items:
            touched = model.touches(item.envelope)
            if touched is not None:
                wanted[touched[0]].add(touched[1])
            wanted["devices"].update(model.devices_named(item.event))
        state = FleetState(
            devices=await DEVICES.load(conn, wanted["devices"]),
            sites=await SITES.load(conn, wanted["sites"]),
            snapshots=await SNAPSHOTS.load(conn, wanted["snapshots"]),
            rollouts=await ROLLOUTS.load(conn, wanted["rollouts"]),
        )
        before = dict(state.devices)
        for index, item in enumerate(items):
            try:
                model.apply(state, item.seq, item.envelope, item.event)
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc
        cells: dict[model.CounterKey, list[int]] = {}
        changed: list[DeviceRow] = []
        for device_id, row in state.devices.items():
            old = before.get(device_id)
            if old is row:
                continue
            changed.append(row)
            model.add_counts(cells, old, -1)
            model.add_counts(cells, row, 1)
        await DEVICES.upsert(conn, changed)
        await _write_counts(conn, cells)
        progress = _progress_statement(state.progress)  # deltas: the batch's state started from none
        if progress is not None:
            await conn.execute(progress[0], *progress[1])
        for table, rows in (("sites", state.sites), ("snapshots", state.snapshots),
                            ("rollouts", state.rollouts)):
            if wanted[table]:
                await TABLES[table].upsert(conn, [rows[key] for key in wanted[table] if key in rows])


async def _write_counts(conn: asyncpg.Connection, cells: dict[model.CounterKey, list[int]]) -> None:
    statement = _counts_statement(cells)
    if statement is not None:
        await conn.execute(statement[0], *statement[1])


def _counts_statement(cells: dict[model.CounterKey, list[int]]) -> Statement | None:
    deltas = [(key, values) for key, values in cells.items() if any(values)]
    if not deltas:
        return None
    columns: list[list[object]] = [[key[0] for key, _ in deltas], [key[1] for key, _ in deltas]]
    columns += [[values[i] for _, values in deltas] for i in range(len(COUNTER_FIELDS))]
    return _COUNTS_SQL, tuple(columns)


def _progress_statement(progress: model.Progress) -> Statement | None:
    """Add per-wave counters (whole ones into an empty table, or a batch's deltas)."""
    cells = [(rollout_id, wave, values) for rollout_id, waves in progress.items()
             for wave, values in waves.items() if any(values)]
    if not cells:
        return None
    columns: list[list[object]] = [[c[0] for c in cells], [c[1] for c in cells]]
    columns += [[c[2][i] for c in cells] for i in range(len(PROGRESS_FIELDS))]
    return _PROGRESS_SQL, tuple(columns)


async def load_progress(conn: asyncpg.Connection, rollout_ids: list[str] | None = None,
                        schema: str = "") -> model.Progress:
    """Per-wave counters of some rollouts (None: of all)."""
    where = "" if rollout_ids is None else " WHERE rollout_id = ANY($1::text[])"
    records = await conn.fetch(f"SELECT rollout_id, wave, {', '.join(PROGRESS_FIELDS)} FROM "
                               f"{schema}rollout_progress{where}", *(() if rollout_ids is None else (rollout_ids,)))
    out: model.Progress = {}
    for r in records:
        out.setdefault(r["rollout_id"], {})[r["wave"]] = [int(r[f]) for f in PROGRESS_FIELDS]
    return out


async def load_state(conn: asyncpg.Connection, changed_after: int | None = None) -> FleetState:
    """The whole read model as an in-memory state (for point-in-time copies); with
    `changed_after`, only the rows changed after that sequence (for a delta)."""
    state = FleetState()
    where = "" if changed_after is None else " WHERE updated_seq > $1"
    args = () if changed_after is None else (changed_after,)
    for table, target in (("devices", state.devices), ("sites", state.sites),
                          ("snapshots", state.snapshots), ("rollouts", state.rollouts)):
        rows = TABLES[table]
        async with conn.transaction():
            cursor = conn.cursor(f"SELECT {', '.join(rows.columns)} FROM {rows.name}{where}", *args,
                                 prefetch=5000)
            async for record in cursor:
                target[record[rows.key]] = rows.from_record(record)
    state.progress = await load_progress(conn)  # small (rollouts x waves): always whole
    return state


class FleetBuilder:
    """The fleet read model folded in memory from sequence 1, written in bulk at the end."""

    CHUNK = 10_000

    def __init__(self, version: int, snapshot_every: int | None, *, full_every: int = snapshots.FULL_EVERY) -> None:
        self.state = FleetState()
        self.version = version
        self.snapshot_every = snapshot_every
        self.full_every = full_every
        self.last_snapshot = 0
        self.deltas_since_full: int | None = None  # None: no full copy taken yet
        self.pending: list[_Copy] = []

    def add(self, items: Sequence[Item], last_seq: int, last_at: str) -> None:
        """Fold a batch (and take a point-in-time copy when one is due: a delta of what changed
        since the last copy, or every `full_every` copies a full one)."""
        for index, item in enumerate(items):
            try:
                model.apply(self.state, item.seq, item.envelope, item.event)
            except Exception as exc:
                raise Poison(index, item.seq, exc) from exc
        self.state.seq = last_seq
        if self.snapshot_every and last_seq - self.last_snapshot >= self.snapshot_every:
            if self.deltas_since_full is None or self.deltas_since_full + 1 >= self.full_every:
                copy, base, self.deltas_since_full = self.state, None, 0
            else:
                copy, base = snapshots.changed_since(self.state, self.last_snapshot), self.last_snapshot
                self.deltas_since_full += 1
            self.pending.append(_Copy(last_seq, last_at, len(copy.devices), snapshots.encode_state(copy), base))
            self.last_snapshot = last_seq

    def should_flush(self) -> bool:
        """Copies are written as they come; rows only at the end."""
        return bool(self.pending)

    def take(self, *, final: bool) -> list[Statement]:
        """Inserts of the pending copies; when `final`, of every row (a chunk each) and the
        counters too."""
        copies, self.pending = self.pending, []
        out: list[Statement] = [
            snapshots.save_statement(self.version, c.seq, at=c.at, devices=c.devices, blob=c.blob, base_seq=c.base)
            for c in copies]
        if final:
            state = self.state
            for table, rows in (("devices", state.devices), ("sites", state.sites),
                                ("snapshots", state.snapshots), ("rollouts", state.rollouts)):
                values = list(rows.values())
                out += [TABLES[table].insert_json(values[start:start + self.CHUNK])
                        for start in range(0, len(values), self.CHUNK)]
            counts = _counts_statement(model.count_all(state))
            if counts is not None:
                out.append(counts)
            progress = _progress_statement(state.progress)
            if progress is not None:
                out.append(progress)
        return out


class _Copy(NamedTuple):
    """A point-in-time copy taken while building, waiting to be written."""

    seq: int
    at: str
    devices: int
    blob: bytes
    base: int | None  # None: a full copy
