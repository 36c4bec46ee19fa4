"""Point in time: the fleet read model as it stood at any log sequence, computed by replaying the
log with the same pure fold the live projection uses.

The fleet runner stores a compressed copy of the read model every `every` events (in the same
transaction as its checkpoint, so the copy is exactly the state at that sequence): mostly deltas,
the rows changed since the previous copy, and every `snapshots.FULL_EVERY` copies a full one,
composed in the background from the stored copies (`projections.fleet.snapshots`). A historical
question starts from the newest state the copies give at or before its sequence and replays only
the tail; the states it computed are kept in a small cache, so asking again is answered from
memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime

import asyncpg

from projections.fleet import model, snapshots
from projections.fleet.model import FleetState
from projections.fleet.store import FleetProjection, load_state
from projections.runner import decode_batch, version_of
from shared.eventlog import EventLog

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 50_000
FLEET_VERSION = version_of(FleetProjection())


def snapshot_hook(every: int = SNAPSHOT_EVERY, full_every: int = snapshots.FULL_EVERY,
                  pool: asyncpg.Pool | None = None) -> SnapshotHook:
    """An after-batch hook for the fleet runner: store a read-model copy every `every` events."""
    return SnapshotHook(every, full_every, pool)


class SnapshotHook:
    """After a batch (in its transaction), store a copy of the read model when `every` events
    have passed since the last one: a delta of the rows changed since then. Every `full_every`-th
    copy is made a full one. With a `pool`, that full copy is composed in the background from the
    copies already stored (the newest full one and the deltas after it), off the batch
    transaction, and replaces the delta just stored at the same sequence; without one (or when no
    full copy exists yet) it is read from the read model inside the batch, which at a large fleet
    holds the projection up for as long as reading every row takes."""

    def __init__(self, every: int, full_every: int, pool: asyncpg.Pool | None) -> None:
        self.every = every
        self.full_every = full_every
        self.pool = pool
        self._composing: asyncio.Task[None] | None = None

    async def __call__(self, conn: asyncpg.Connection, seq: int, at: str) -> None:
        """The hook proper."""
        newest = await conn.fetchval("SELECT max(seq) FROM pit_snapshots WHERE version = $1", FLEET_VERSION)
        if seq - (newest or 0) < self.every:
            return
        last = await snapshots.latest(conn, FLEET_VERSION)
        full_due = snapshots.full_due(last, self.full_every)
        if last is None or (full_due and self.pool is None):
            state, base = await load_state(conn), None
        else:
            state, base = await load_state(conn, changed_after=last.seq), last.seq
        state.seq = seq
        await snapshots.save(conn, FLEET_VERSION, seq, at=at, devices=len(state.devices),
                             blob=snapshots.encode_state(state), base_seq=base)
        if base is not None and full_due and self.pool is not None and self._composing is None:
            self._composing = asyncio.ensure_future(self._compose(self.pool, seq))

    async def _compose(self, pool: asyncpg.Pool, seq: int) -> None:
        try:
            if not await snapshots.make_full(pool, FLEET_VERSION, seq):
                log.warning("point-in-time copy at %d not made full (its batch did not commit, or a copy "
                            "before it is missing); the next due copy tries again", seq)
        except Exception:  # a failed full copy costs only a longer chain of deltas: logged, not fatal
            log.exception("point-in-time copy at %d: making it full failed", seq)
        finally:
            self._composing = None

    async def idle(self) -> None:
        """Wait until no full copy is being composed."""
        while self._composing is not None:
            await asyncio.shield(self._composing)


class PointInTime:
    """Answers `state_at(seq)`; keeps the last few computed states."""

    def __init__(self, pool: asyncpg.Pool, eventlog: EventLog, *, cache_size: int = 2) -> None:
        self.pool = pool
        self.log = eventlog
        self.cache_size = cache_size
        self._cache: OrderedDict[int, FleetState] = OrderedDict()
        self._lock = asyncio.Lock()
        self.answers: OrderedDict[tuple[object, ...], object] = OrderedDict()  # derived answers

    async def seq_at(self, when: datetime) -> int:
        """The sequence of the last event (by its time) at or before `when` (0: before the log)."""
        async with self.pool.acquire() as conn:
            # The newest event by time at or before `when`: one step down the (at, seq) index.
            seq = await conn.fetchval(
                "SELECT seq FROM rm_changes.changes WHERE at <= $1 ORDER BY at DESC, seq DESC LIMIT 1", when)
        return int(seq or 0)

    async def state_at(self, seq: int) -> FleetState:
        """The fleet read model after applying the log up to and including `seq`."""
        async with self._lock:  # one replay at a time; a second asker then hits the cache
            cached = self._cache.get(seq)
            if cached is not None:
                self._cache.move_to_end(seq)
                return cached
            state = await self._base(seq)
            if state.seq < seq:
                async for batch in self.log.batches(state.seq + 1, seq, size=5000):
                    items, _ = decode_batch(batch)
                    for item in items:
                        model.apply(state, item.seq, item.envelope, item.event)
                    state.seq = batch[-1].seq
            state.seq = seq
            self._cache[seq] = state
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return state

    async def _base(self, seq: int) -> FleetState:
        """A private copy of the nearest known state at or before `seq`."""
        best = max((s for s in self._cache if s <= seq), default=None)
        async with self.pool.acquire() as conn:
            newest = await conn.fetchval(
                "SELECT max(seq) FROM pit_snapshots WHERE version = $1 AND seq <= $2", FLEET_VERSION, seq)
            if best is not None and (newest is None or best >= newest):
                src = self._cache[best]
                return FleetState(seq=src.seq, devices=dict(src.devices), sites=dict(src.sites),
                                  snapshots=dict(src.snapshots), rollouts=dict(src.rollouts),
                                  progress={k: {w: list(v) for w, v in waves.items()}
                                            for k, waves in src.progress.items()})
            state = await snapshots.state_at(conn, FLEET_VERSION, seq)
        return FleetState() if state is None else state

    def remember(self, key: tuple[object, ...], answer: object) -> None:
        """Keep a derived answer (e.g. a summary) for a sequence."""
        self.answers[key] = answer
        while len(self.answers) > 16:  # answers can be whole sorted id lists: keep few
            self.answers.popitem(last=False)
