"""Benchmark of the fleet diff between two moments (issue 12): `GET /v1/diff`'s query over the
`changes` read model, at a large fleet, for windows of 1,000 to 100,000 changes.

    .venv/bin/python -m benchmarks.diff [--devices 1000000] [--rounds 2] [--windows 1000,10000,100000]

Builds the `changes` read model of a generated fleet history (`benchmarks.synthetic.fleet_history`,
the generator of benchmarks/projections.py: about devices x (4 + rounds/2) events) straight into an
EmbeddedPostgres with the projection's own rebuild code (`ChangesBuilder`: the same rows, bulk
writes, indexes after the load), without NATS: the diff never reads the log. Then, for each window
of W changes ending a little before the head:

- raw: reading the window's change rows (`device_id, seq` of every change in (T1, T2], fetched) —
  the least any diff that looks at the window must do;
- ours: `projections.api.diff.fleet_diff` (the SQL behind `GET /v1/diff`: the window's devices,
  each one's state at T2 and at T1 through the (device_id, seq) index, grouped in Python), with an
  empty diff cache.

Cold = first ask after a restart of PostgreSQL (its shared buffers empty; the operating system's
page cache is not dropped, so the files may still be in memory). Warm = asked again. Each cold
figure has its own restart. Prints each figure, the raw limit beside it and the ratio raw/ours.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from benchmarks.synthetic import fleet_history
from projections.api.diff import DiffCache, fleet_diff
from projections.changes.store import ChangesBuilder, ChangesProjection
from projections.runner import Item, create_pool, migration_parts, version_of
from shared.embedded import EmbeddedPostgres
from shared.envelope import decode_event

ROOT = Path(__file__).resolve().parents[1]


async def build(pg: EmbeddedPostgres, devices: int, rounds: int) -> int:
    """Write the changes read model of a generated history; return its last sequence."""
    projection = ChangesProjection()
    before, after = migration_parts(projection)
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute((ROOT / "projections" / "control.sql").read_text())
        await conn.execute("DROP SCHEMA IF EXISTS rm_changes CASCADE; CREATE SCHEMA rm_changes")
        await conn.execute("SET search_path TO rm_changes, public")
        for sql in before:
            await conn.execute(sql)
        builder = ChangesBuilder()
        seq = 0
        started = time.perf_counter()
        start = datetime.now(UTC) - timedelta(days=3)
        for writes in fleet_history(devices, rounds=rounds, start=start, span=timedelta(days=2)):
            items = []
            for write in writes:
                for env in write.envelopes:
                    seq += 1
                    event = decode_event(env)
                    assert event is not None
                    items.append(Item(seq, env, event))
            for offset in range(0, len(items), 5000):
                builder.add(items[offset:offset + 5000], seq, items[-1].envelope.at)
                if builder.should_flush():
                    for sql, args in builder.take(final=False):
                        await conn.execute(sql, *args)
        for sql, args in builder.take(final=True):
            await conn.execute(sql, *args)
        loaded = time.perf_counter()
        for sql in after:
            await conn.execute(sql)
        await conn.execute("ANALYZE rm_changes.changes")
        await conn.execute(
            "INSERT INTO projection_status (name, version, checkpoint) VALUES ('changes', $1, $2) "
            "ON CONFLICT (name) DO UPDATE SET checkpoint = EXCLUDED.checkpoint", version_of(projection), seq)
        print(f"built: {seq:,} changes about {devices:,} devices in {loaded - started:.0f} s "
              f"(+ {time.perf_counter() - loaded:.0f} s indexes)", flush=True)
        return seq
    finally:
        await conn.close()


async def restart(pg: EmbeddedPostgres) -> None:
    """Empty PostgreSQL's shared buffers (the OS page cache stays)."""
    await asyncio.to_thread(pg.stop)
    await pg.start()


async def raw_window(pool: asyncpg.Pool, from_seq: int, to_seq: int) -> float:
    started = time.perf_counter()
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT device_id, seq FROM rm_changes.changes WHERE seq > $1 AND seq <= $2",
                                from_seq, to_seq)
    assert len(rows) == to_seq - from_seq
    return time.perf_counter() - started


async def our_diff(pool: asyncpg.Pool, from_seq: int, to_seq: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    computed = await fleet_diff(pool, DiffCache(), from_seq, to_seq)
    return time.perf_counter() - started, len(computed.devices), len(computed.groups)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--windows", default="1000,10000,100000", help="window sizes, in changes")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-diff-"))
    pg = EmbeddedPostgres(tmp / "pg", durable=True)
    await pg.start()
    try:
        print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
        head = await build(pg, args.devices, args.rounds)
        print(f"{'window':>9} {'devices':>9} {'groups':>7} | {'cold ours':>9} {'raw':>7} {'raw/ours':>8} | "
              f"{'warm ours':>9} {'raw':>7} {'raw/ours':>8}")
        for window in windows:
            to_seq = head - 1000
            from_seq = to_seq - window
            await restart(pg)
            pool = await create_pool(pg.dsn(), min_size=1, max_size=2)
            cold, changed, groups = await our_diff(pool, from_seq, to_seq)
            warm, _, _ = await our_diff(pool, from_seq, to_seq)
            raw_warm = await raw_window(pool, from_seq, to_seq)
            await pool.close()
            await restart(pg)
            pool = await create_pool(pg.dsn(), min_size=1, max_size=2)
            raw_cold = await raw_window(pool, from_seq, to_seq)
            await pool.close()
            print(f"{window:>9,} {changed:>9,} {groups:>7,} | {cold:>8.3f}s {raw_cold:>6.3f}s {raw_cold / cold:>7.2f}x | "
                  f"{warm:>8.3f}s {raw_warm:>6.3f}s {raw_warm / warm:>7.2f}x", flush=True)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
