"""Point-in-time copies of the fleet read model in `pit_snapshots` (keyed by the projection's
schema version and the log sequence), compressed.

A full copy is a whole `FleetState`. A delta holds only the rows changed after an earlier copy
(`base_seq`): rows are never deleted and every change stamps the row's `updated_seq`, so "every row
with updated_seq > base" is exactly what changed. A state at a sequence is the newest full copy at
or before it with the deltas after it laid over in order. Deltas are cheap to take (what changed
in the last N events, not the whole fleet); a full copy is taken every FULL_EVERY copies so the
chain a reader lays over stays short.
"""

from __future__ import annotations

import asyncio
import zlib

import asyncpg
import msgspec

from projections.fleet.model import FleetState

FULL_EVERY = 20  # copies: one full, then deltas, then a full again

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(FleetState)


def encode_state(state: FleetState) -> bytes:
    """Compressed bytes of a state."""
    return zlib.compress(_ENCODER.encode(state), 1)


def decode_state(blob: bytes) -> FleetState:
    """The state of `encode_state` bytes."""
    return _DECODER.decode(zlib.decompress(blob))


def changed_since(state: FleetState, base_seq: int) -> FleetState:
    """The rows of `state` changed after `base_seq` (a delta's content)."""
    return FleetState(
        seq=state.seq,
        devices={k: r for k, r in state.devices.items() if r.updated_seq > base_seq},
        sites={k: r for k, r in state.sites.items() if r.updated_seq > base_seq},
        snapshots={k: r for k, r in state.snapshots.items() if r.updated_seq > base_seq},
        rollouts={k: r for k, r in state.rollouts.items() if r.updated_seq > base_seq},
        progress=state.progress,  # small: carried whole
    )


def lay_over(state: FleetState, delta: FleetState) -> None:
    """Apply a delta to a state (in place)."""
    state.devices.update(delta.devices)
    state.sites.update(delta.sites)
    state.snapshots.update(delta.snapshots)
    state.rollouts.update(delta.rollouts)
    state.progress = {k: {w: list(v) for w, v in waves.items()} for k, waves in delta.progress.items()}
    state.seq = delta.seq


class Latest(msgspec.Struct, frozen=True):
    """The newest copy of a version and how many deltas lie on its newest full copy."""

    seq: int
    deltas_since_full: int


async def latest(conn: asyncpg.Connection, version: int) -> Latest | None:
    """The newest copy of `version` (None: there is none)."""
    row = await conn.fetchrow(
        "SELECT max(seq) AS seq, count(*) FILTER (WHERE seq > coalesce(("
        "  SELECT max(seq) FROM pit_snapshots WHERE version = $1 AND base_seq IS NULL), -1)) AS deltas, "
        "bool_or(base_seq IS NULL) AS any_full FROM pit_snapshots WHERE version = $1", version)
    if row is None or row["seq"] is None or not row["any_full"]:
        return None
    return Latest(int(row["seq"]), int(row["deltas"]))


def full_due(last: Latest | None, full_every: int = FULL_EVERY) -> bool:
    """Whether the next copy should be a full one."""
    return last is None or last.deltas_since_full + 1 >= full_every


_SAVE_SQL = ("INSERT INTO pit_snapshots (version, seq, at, devices, state, base_seq) "
             "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")


async def save(conn: asyncpg.Connection, version: int, seq: int, *, at: str, devices: int, blob: bytes,
               base_seq: int | None = None) -> None:
    """Store one copy, full or (with `base_seq`) a delta. A copy of the same version and sequence
    is the same state: kept once."""
    await conn.execute(_SAVE_SQL, version, seq, at, devices, blob, base_seq)


def save_statement(version: int, seq: int, *, at: str, devices: int, blob: bytes,
                   base_seq: int | None) -> tuple[str, tuple[object, ...]]:
    """`save` as SQL and arguments (for a rebuild's bulk writes)."""
    return _SAVE_SQL, (version, seq, at, devices, blob, base_seq)


async def state_at(conn: asyncpg.Connection, version: int, seq: int) -> FleetState | None:
    """The newest state the copies give at or before `seq`: the newest full copy with the
    deltas after it laid over, as long as they follow on from each other (None: no full copy)."""
    full = await conn.fetchrow(
        "SELECT seq, state FROM pit_snapshots WHERE version = $1 AND seq <= $2 AND base_seq IS NULL "
        "ORDER BY seq DESC LIMIT 1", version, seq)
    if full is None:
        return None
    state = await asyncio.to_thread(decode_state, full["state"])  # decompressing lets go of the GIL
    async with conn.transaction():
        async for delta in conn.cursor(
                "SELECT seq, base_seq, state FROM pit_snapshots WHERE version = $1 AND seq > $2 "
                "AND seq <= $3 AND base_seq IS NOT NULL ORDER BY seq", version, full["seq"], seq, prefetch=4):
            if delta["base_seq"] > state.seq:  # a gap (a copy missing): the log replays the rest
                break
            lay_over(state, decode_state(delta["state"]))
    return state


async def make_full(pool: asyncpg.Pool, version: int, seq: int, wait: float = 30.0) -> bool:
    """Replace the delta at `seq` by a full copy composed from the copies before it (the newest
    full one, the deltas after it), not from the read model: nothing waits on it. Waits up to
    `wait` seconds for the delta to be committed. False when it could not (no such delta, or a gap
    in the chain)."""
    deadline = asyncio.get_running_loop().time() + wait
    async with pool.acquire() as conn:
        while not await conn.fetchval(
                "SELECT 1 FROM pit_snapshots WHERE version = $1 AND seq = $2 AND base_seq IS NOT NULL",
                version, seq):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.1)
        state = await state_at(conn, version, seq)
    if state is None or state.seq != seq:
        return False
    blob = await asyncio.to_thread(encode_state, state)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE pit_snapshots SET state = $3, devices = $4, base_seq = NULL "
            "WHERE version = $1 AND seq = $2 AND base_seq IS NOT NULL", version, seq, blob, len(state.devices))
    return True
