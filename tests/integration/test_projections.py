"""The projection runner against real NATS and PostgreSQL: exactly-once under redelivery, under a
kill -9 mid-batch and under a PostgreSQL outage; rebuild equals incremental; poison events are
recorded and skipped; unknown event types are skipped and counted; a schema change rebuilds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from benchmarks.synthetic import fleet_history
from projections.changes.store import ChangesProjection
from projections.fleet import model, snapshots
from projections.fleet.store import FleetBuilder, FleetProjection
from projections.main import all_projections
from projections.pointintime import FLEET_VERSION, snapshot_hook
from projections.runner import (
    Item,
    Poison,
    Projection,
    Runner,
    create_pool,
    decode_batch,
    rebuild,
    version_of,
)
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.envelope import Envelope, seal
from shared.eventlog import EventLog
from shared.events import observed, registry

ROOT = Path(__file__).resolve().parents[2]


# --- helpers (also used by test_api*.py) -------------------------------------------------------------

async def append_history(log: EventLog, devices: int = 60, *, rounds: int = 2, seed: int = 7,
                         start: datetime | None = None, span: timedelta = timedelta(hours=1)) -> int:
    """Append a generated fleet history; return the log's last sequence."""
    start = start or datetime.now(UTC) - timedelta(days=1)
    for writes in fleet_history(devices, rounds=rounds, seed=seed, start=start, span=span):
        await log.append_batch(writes)
    return await log.last_stream_seq()


async def wait_caught_up(pool: asyncpg.Pool, log: EventLog, names: Sequence[str] = ("fleet", "changes"),
                         timeout: float = 60.0, fail_fast: bool = True) -> int:
    """Wait until every named projection has applied the whole log."""
    head = await log.last_stream_seq()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('public.projection_status') IS NOT NULL")
            rows = await conn.fetch("SELECT name, checkpoint, state FROM projection_status") if exists else []
        done = {r["name"]: r["checkpoint"] for r in rows}
        if all(done.get(n, -1) >= head for n in names):
            return head
        assert not (fail_fast and any(r["state"] == "failed" for r in rows)), rows
        assert asyncio.get_running_loop().time() < deadline, f"not caught up to {head}: {done}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(pool: asyncpg.Pool, log: EventLog, projections: Sequence[Projection] | None = None,
                  **kwargs: Any) -> AsyncIterator[list[Runner]]:
    """Runners following the log in the background for the duration of the block."""
    runners = [Runner(pool, log, p, retry_wait=0.1, **kwargs) for p in (projections or all_projections())]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        yield runners
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def dump(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Every read-model row, in a stable order (counter cells that are all zero left out)."""
    out: dict[str, list[dict[str, Any]]] = {}
    async with pool.acquire() as conn:
        for table, order in (("rm_fleet.devices", "device_id"), ("rm_fleet.sites", "site_id"),
                             ("rm_fleet.snapshots", "snapshot_id"), ("rm_fleet.rollouts", "rollout_id"),
                             ("rm_fleet.device_counts", "site_id, snapshot_id"), ("rm_changes.changes", "seq"),
                             ("rm_fleet.rollout_progress", "rollout_id, wave"),
                             ("rm_changes.device_sites", "device_id")):
            rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")]
            if table.endswith("device_counts"):
                rows = [r for r in rows if any(r[f] for f in model.COUNTER_FIELDS)]
            if table.endswith("rollout_progress"):
                rows = [r for r in rows if any(r[f] for f in model.PROGRESS_FIELDS)]
            out[table] = rows
    return out


async def differ_from_rebuild(database_url: str, passfile: str | None, eventlog: EventLog) -> list[str]:
    """The read-model tables that differ from a fresh rebuild of every projection from the log
    (none: they are equal), compared at a moment when nothing was appended between the two reads
    (tried until the log stands still)."""
    pool = await create_pool(database_url, passfile=passfile, min_size=1, max_size=4)
    try:
        for _ in range(30):
            head = await wait_caught_up(pool, eventlog, timeout=120)
            incremental = await dump(pool)
            for projection in all_projections():
                await rebuild(pool, eventlog, projection)
            rebuilt = await dump(pool)
            if await eventlog.last_stream_seq() == head:  # nothing appended meanwhile
                return [table for table in incremental if incremental[table] != rebuilt.get(table)]
            await asyncio.sleep(2)
        raise AssertionError("the log never stopped growing long enough to compare")
    finally:
        await pool.close()


def recount(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The counters recomputed from device rows (what the incremental counters must equal)."""
    state = model.FleetState(devices={d["device_id"]: msgspec.convert(d, model.DeviceRow) for d in devices})
    cells = model.count_all(state)
    return [{"site_id": k[0], "snapshot_id": k[1], **dict(zip(model.COUNTER_FIELDS, v, strict=True))}
            for k, v in sorted(cells.items()) if any(v)]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=6)
    yield p
    await p.close()


# --- tests ---------------------------------------------------------------------------------------------

async def test_incremental_equals_rebuild_and_counters_equal_recount(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    await append_history(eventlog, 40, rounds=1)
    async with running(pool, eventlog, batch_size=17):
        await wait_caught_up(pool, eventlog)
        # More history while the runners follow, in small batches.
        await append_history(eventlog, 40, rounds=3, seed=8)
        await wait_caught_up(pool, eventlog)
    incremental = await dump(pool)
    assert len(incremental["rm_fleet.devices"]) == 40
    assert incremental["rm_fleet.device_counts"] == recount(incremental["rm_fleet.devices"])
    assert len(incremental["rm_changes.changes"]) == await eventlog.last_stream_seq()
    for projection in all_projections():
        await rebuild(pool, eventlog, projection, batch_size=1000)
    assert await dump(pool) == incremental


async def test_two_runners_on_one_projection_apply_each_event_once(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    """Two consumers delivering the same events (redelivery at its worst): the checkpoint check in
    the batch transaction lets exactly one of them apply each event."""
    await append_history(eventlog, 30, rounds=1)
    async with running(pool, eventlog, batch_size=7), running(pool, eventlog, batch_size=11):
        await append_history(eventlog, 30, rounds=2, seed=9)
        await wait_caught_up(pool, eventlog)
    live = await dump(pool)
    assert [r["seq"] for r in live["rm_changes.changes"]] == list(range(1, await eventlog.last_stream_seq() + 1))
    assert live["rm_fleet.device_counts"] == recount(live["rm_fleet.devices"])
    async with pool.acquire() as conn:
        applied = await conn.fetchval("SELECT applied FROM projection_status WHERE name = 'changes'")
    assert applied == await eventlog.last_stream_seq()
    for projection in all_projections():
        await rebuild(pool, eventlog, projection)
    assert await dump(pool) == live


_CHILD = textwrap.dedent("""
    import asyncio, sys
    import nats
    from projections.main import all_projections
    from projections.runner import Runner, create_pool
    from shared.eventlog import EventLog

    async def main():
        nc = await nats.connect(sys.argv[1])
        pool = await create_pool(sys.argv[2], min_size=1, max_size=4)
        log = EventLog(nc)
        await asyncio.gather(*(Runner(pool, log, p, batch_size=int(sys.argv[3])).run() for p in all_projections()))

    asyncio.run(main())
""")


async def test_kill_9_mid_batch_then_resume_applies_each_event_once(
    eventlog: EventLog, pool: asyncpg.Pool, nats_server: EmbeddedNats, database_url: str
) -> None:
    first = await append_history(eventlog, 20, rounds=0)
    for projection in all_projections():  # built and live: the child then follows batch by batch
        await rebuild(pool, eventlog, projection)
    head = await append_history(eventlog, 400, rounds=2, seed=3)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, nats_server.url, database_url, "23"],  # noqa: ASYNC220 - a child that outlives this call
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(600):
            async with pool.acquire() as conn:
                exists = await conn.fetchval("SELECT to_regclass('public.projection_status') IS NOT NULL")
                done = await conn.fetch("SELECT checkpoint FROM projection_status") if exists else []
            if len(done) == 2 and all(first < r["checkpoint"] for r in done):
                break
            await asyncio.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    async with pool.acquire() as conn:
        at_kill = {r["name"]: r["checkpoint"] for r in await conn.fetch("SELECT * FROM projection_status")}
    assert any(c < head for c in at_kill.values()), "the child finished before it was killed"
    async with running(pool, eventlog, batch_size=50):
        await wait_caught_up(pool, eventlog)
    resumed = await dump(pool)
    assert [r["seq"] for r in resumed["rm_changes.changes"]] == list(range(1, head + 1))
    assert resumed["rm_fleet.device_counts"] == recount(resumed["rm_fleet.devices"])
    for projection in all_projections():
        await rebuild(pool, eventlog, projection)
    assert await dump(pool) == resumed


class _Fragile(FleetProjection):
    """The fleet projection with a bug: it cannot apply anything about device `dev-0000003`."""

    async def apply_batch(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        for index, item in enumerate(items):
            if item.envelope.aggregate_id == "dev-0000003" and item.envelope.type == "DeviceRelabeled":
                raise Poison(index, item.seq, ValueError("cannot relabel dev-0000003"))
        await super().apply_batch(conn, items)


async def poison_rows(pool: asyncpg.Pool, name: str) -> list[tuple[int, str, str]]:
    """(seq, aggregate_id, error) of the events the live schema of `name` skipped."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.seq, p.aggregate_id, p.error FROM projection_poison p JOIN projection_status s "
            "ON s.name = p.name AND s.generation = p.generation WHERE p.name = $1 ORDER BY p.seq", name)
    return [(r["seq"], r["aggregate_id"], r["error"]) for r in rows]


async def tiers(pool: asyncpg.Pool) -> dict[str, str]:
    """Each device's `tier` label as the fleet read model has it."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT device_id, labels->>'tier' AS tier FROM rm_fleet.devices")
    return {r["device_id"]: r["tier"] for r in rows}


async def relabel(eventlog: EventLog, device: str, tier: str) -> int:
    """Append a relabelling of one device; its sequence."""
    event = registry.DeviceRelabeled(device_id=device, labels={"tier": tier})
    [done] = await eventlog.append(event.subject, [seal(event, actor="operator:t", at=datetime.now(UTC))], None)
    return done.seq


async def test_poison_event_is_recorded_and_skipped_and_the_projection_goes_on(
    eventlog: EventLog, pool: asyncpg.Pool
) -> None:
    await append_history(eventlog, 10, rounds=0)
    async with running(pool, eventlog, [FleetProjection()]):
        await wait_caught_up(pool, eventlog, ["fleet"])
    await relabel(eventlog, "dev-0000002", "before")
    poison = await relabel(eventlog, "dev-0000003", "x")
    await relabel(eventlog, "dev-0000004", "after")
    async with running(pool, eventlog, [_Fragile()]):
        head = await wait_caught_up(pool, eventlog, ["fleet"])
    async with pool.acquire() as conn:
        status = await conn.fetchrow("SELECT * FROM projection_status WHERE name = 'fleet'")
    assert (status["state"], status["checkpoint"], status["error_seq"]) == ("running", head, poison)
    [(seq, aggregate_id, error)] = await poison_rows(pool, "fleet")
    assert (seq, aggregate_id) == (poison, "dev-0000003") and "cannot relabel dev-0000003" in error
    seen = await tiers(pool)
    assert (seen["dev-0000002"], seen["dev-0000004"]) == ("before", "after")  # both sides applied
    assert seen["dev-0000003"] != "x"  # the poison event changed nothing
    # Once the cause is fixed, a rebuild applies the event and the warning is gone.
    await rebuild(pool, eventlog, FleetProjection())
    assert (await tiers(pool))["dev-0000003"] == "x"
    assert await poison_rows(pool, "fleet") == []


async def test_an_event_postgresql_refuses_is_skipped_alone(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    """A NUL character (PostgreSQL text cannot hold it) in one event: that event is skipped and
    recorded; the events of the same batch around it are applied."""
    await append_history(eventlog, 10, rounds=0)
    await relabel(eventlog, "dev-0000002", "before")
    bad = await relabel(eventlog, "dev-0000003", "nul\x00here")
    await relabel(eventlog, "dev-0000004", "after")
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    seen = await tiers(pool)
    assert (seen["dev-0000002"], seen["dev-0000004"]) == ("before", "after")
    assert [seq for seq, _, _ in await poison_rows(pool, "fleet")] == [bad]
    async with pool.acquire() as conn:
        changes = await conn.fetch("SELECT seq FROM rm_changes.changes WHERE seq >= $1 - 1 ORDER BY seq", bad)
    assert [r["seq"] for r in changes] == [bad - 1, bad + 1]  # the changes projection skipped it too


class _FragileBuild(FleetProjection):
    """The fleet projection whose bulk build cannot apply anything about `dev-0000003`."""

    def builder(self) -> FleetBuilder:
        class Broken(FleetBuilder):
            def add(self, items: Sequence[Item], last_seq: int, last_at: str) -> None:
                for index, item in enumerate(items):
                    if item.envelope.aggregate_id == "dev-0000003":
                        if index:  # as the real builder: what comes before the poison is folded
                            super().add(items[:index], items[index - 1].seq, items[index - 1].envelope.at)
                        raise Poison(index, item.seq, ValueError("cannot build dev-0000003"))
                super().add(items, last_seq, last_at)

        return Broken(1, None)


async def test_poison_event_during_a_rebuild_is_skipped_and_recorded(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    await append_history(eventlog, 10, rounds=0)
    for projection in all_projections():
        await rebuild(pool, eventlog, projection)
    await rebuild(pool, eventlog, _FragileBuild())
    async with pool.acquire() as conn:
        status = await conn.fetchrow("SELECT * FROM projection_status WHERE name = 'fleet'")
        devices = await conn.fetch("SELECT device_id FROM rm_fleet.devices")
    added, _ = await eventlog.load("fleet.evt.device.dev-0000003")
    assert status["state"] == "running"
    skipped = await poison_rows(pool, "fleet")
    assert skipped[0][:2] == (added[0].seq, "dev-0000003") and "cannot build dev-0000003" in skipped[0][2]
    assert {r["device_id"] for r in devices} == {f"dev-{i:07d}" for i in range(10)} - {"dev-0000003"}


async def test_unknown_event_types_are_skipped_and_counted(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    await append_history(eventlog, 5, rounds=0)
    future = Envelope(type="DeviceTeleported", v=1, id="01900000-0000-7000-8000-000000000001", aggregate="device",
                      aggregate_id="dev-0000001", at="2026-11-28T00:00:00.000000Z", actor="service:future",
                      data=msgspec.Raw(b'{"device_id":"dev-0000001","to":"mars"}'))
    await eventlog.append("fleet.evt.device.dev-0000001", [future], None)
    came = observed.DeviceWentOffline(device_id="dev-0000001", last_seen="2026-11-28T00:00:00.000000Z")
    await eventlog.append(came.subject, [seal(came, actor="service:drift", at=datetime.now(UTC))], None)
    async with running(pool, eventlog):
        head = await wait_caught_up(pool, eventlog)
    async with pool.acquire() as conn:
        rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM projection_status")}
        online = await conn.fetchval("SELECT online FROM rm_fleet.devices WHERE device_id = 'dev-0000001'")
        changes = await conn.fetchval("SELECT count(*) FROM rm_changes.changes")
    assert all(r["skipped_unknown"] == 1 and r["checkpoint"] == head for r in rows.values())
    assert online is False
    assert changes == head - 1


async def test_changed_schema_version_rebuilds_and_queries_keep_answering(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    await append_history(eventlog, 50, rounds=1)
    async with running(pool, eventlog):
        await wait_caught_up(pool, eventlog)
    before = await dump(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE projection_status SET version = version - 1 WHERE name = 'fleet'")
        generation = await conn.fetchval("SELECT generation FROM projection_status WHERE name = 'fleet'")
    answers: list[int] = []
    stop = asyncio.Event()

    async def query() -> None:  # a reader during the rebuild never sees an error or an empty fleet
        while not stop.is_set():
            async with pool.acquire() as conn:
                answers.append(await conn.fetchval("SELECT sum(total) FROM rm_fleet.device_counts"))
            await asyncio.sleep(0)

    reader = asyncio.create_task(query())
    async with running(pool, eventlog, [FleetProjection()], batch_size=5):
        for _ in range(600):
            async with pool.acquire() as conn:
                row = await conn.fetchrow("SELECT generation, version, checkpoint FROM projection_status "
                                          "WHERE name = 'fleet'")
            if row["generation"] > generation and row["version"] == version_of(FleetProjection()):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the fleet projection was not rebuilt: {dict(row)}")
        await wait_caught_up(pool, eventlog, ["fleet"])
    stop.set()
    await reader
    assert row["generation"] == generation + 1
    assert answers
    assert set(answers) == {50}
    assert await dump(pool) == before


async def test_point_in_time_snapshots_are_taken_every_n_events(eventlog: EventLog, pool: asyncpg.Pool) -> None:
    built = await append_history(eventlog, 60, rounds=2)
    fleet = [FleetProjection(snapshot_every=100)]
    async with running(pool, eventlog, fleet, batch_size=50, after_batch=snapshot_hook(100)):
        await wait_caught_up(pool, eventlog, ["fleet"])  # the build takes copies as it folds
        head = await append_history(eventlog, 60, rounds=2, seed=5)
        await wait_caught_up(pool, eventlog, ["fleet"])  # and so does the runner as it follows
    async with pool.acquire() as conn:
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM pit_snapshots ORDER BY seq")]
    assert any(s <= built for s in seqs)
    assert len([s for s in seqs if s > built]) >= (head - built) // 100 - 1
    assert all(b - a >= 100 for a, b in itertools.pairwise(seqs))


async def _folded(log: EventLog, seq: int) -> model.FleetState:
    """The fleet state at `seq`, folded from the start of the log with the pure model."""
    state = model.FleetState()
    async for batch in log.batches(1, seq, size=1000):
        items, _ = decode_batch(batch)
        for item in items:
            model.apply(state, item.seq, item.envelope, item.event)
    state.seq = seq
    return state


@pytest.mark.parametrize("in_background", [False, True], ids=["full-in-batch", "full-in-background"])
async def test_point_in_time_copies_are_mostly_deltas_and_give_back_the_exact_state(
    eventlog: EventLog, pool: asyncpg.Pool, in_background: bool
) -> None:
    """Copies taken by a rebuild and by the runner following the log: a full one,
    then deltas of only what changed, a full one again every `full_every` copies (the runner's
    read from the read model in the batch, or composed in the background from the copies); the
    newest full copy with the deltas after it laid over is exactly the fold of the log up to each
    copy."""
    built = await append_history(eventlog, 60, rounds=4)
    fleet = FleetProjection(snapshot_every=60, full_every=3)
    await rebuild(pool, eventlog, fleet)
    hook = snapshot_hook(60, full_every=3, pool=pool if in_background else None)
    async with running(pool, eventlog, [fleet], batch_size=25, after_batch=hook):
        await append_history(eventlog, 60, rounds=4, seed=5)
        await wait_caught_up(pool, eventlog, ["fleet"])
        await hook.idle()
    async with pool.acquire() as conn:
        copies = await conn.fetch("SELECT seq, base_seq, devices FROM pit_snapshots ORDER BY seq")
        previous = None
        for copy in copies:  # each delta follows on from the copy before it
            assert copy["base_seq"] == (None if copy["base_seq"] is None else previous)
            previous = copy["seq"]
        fulls = [c["seq"] for c in copies if c["base_seq"] is None]
        deltas = [c for c in copies if c["base_seq"] is not None]
        assert len(fulls) >= 2 and any(s <= built for s in fulls) and any(s > built for s in fulls)
        assert any(c["seq"] <= built for c in deltas) and any(c["seq"] > built for c in deltas)
        assert any(c["devices"] < 60 for c in deltas)  # a delta holds what changed, not the fleet
        for copy in copies:
            state = await snapshots.state_at(conn, FLEET_VERSION, copy["seq"])
            assert state == await _folded(eventlog, copy["seq"]), copy["seq"]


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own (durable), which it may stop or kill."""
    server = EmbeddedPostgres(tmp_path / "pg", durable=True)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_postgres_outage_runner_retries_and_resumes_without_duplicates(
    eventlog: EventLog, own_postgres: EmbeddedPostgres
) -> None:
    server = own_postgres
    pool = await create_pool(await server.create_database("outage"), min_size=0, max_size=4)
    try:
        await append_history(eventlog, 30, rounds=1)
        async with running(pool, eventlog, batch_size=13):
            await wait_caught_up(pool, eventlog)
            server.stop()
            await append_history(eventlog, 30, rounds=2, seed=11)  # appended while PostgreSQL is down
            await asyncio.sleep(1.0)
            await server.start()
            await wait_caught_up(pool, eventlog, timeout=60)
        live = await dump(pool)
        head = await eventlog.last_stream_seq()
        assert [r["seq"] for r in live["rm_changes.changes"]] == list(range(1, head + 1))
        assert live["rm_fleet.device_counts"] == recount(live["rm_fleet.devices"])
        for projection in (ChangesProjection(), FleetProjection()):
            await rebuild(pool, eventlog, projection)
        assert await dump(pool) == live
    finally:
        await pool.close()


async def test_kill_9_of_postgresql_while_projections_start_never_stops_them(
    eventlog: EventLog, own_postgres: EmbeddedPostgres
) -> None:
    # PostgreSQL killed at moments of the runners' first build (control tables, advisory locks,
    # the build schema): each time they come back by themselves and catch up, and stop when told.
    # (Killed a few ms into the build, asyncpg reported the lost connection as an error the runner
    # did not retry, and a cancellation as one it did: the projections process never ended.)
    server = own_postgres
    await append_history(eventlog, 20, rounds=1)
    for n, delay in enumerate((0.0, 0.002, 0.004, 0.006, 0.01, 0.02)):
        pool = await create_pool(await server.create_database(f"start_{n}"), min_size=0, max_size=4)
        try:
            async with running(pool, eventlog):
                await asyncio.sleep(delay)
                server.kill()
                await server.start()
                await wait_caught_up(pool, eventlog, timeout=60)
        finally:
            await asyncio.wait_for(pool.close(), 10)
