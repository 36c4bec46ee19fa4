"""What a Prometheus scrape of the API's /metrics costs as the fleet grows (issue 24).

    .venv/bin/python -m benchmarks.scrape [--devices 10000,100000,1000000] [--scrapes 50]

For each fleet size, in a temporary directory: an EmbeddedNats and an EmbeddedPostgres, a
generated history of that many devices (added, assigned, reporting: 3 events per device,
benchmarks/synthetic.py with no rounds) appended to FLEET_EVENTS and projected by the real fleet
projection (`projections.runner.rebuild`). Then, alternating, `--scrapes` times each:

- raw: the least I/O any scrape of both stores does: one PostgreSQL round trip (`SELECT 1`) and
  one JetStream `stream_info` — the limit;
- ours: the whole fleet part of `/metrics` (`projections.api.fleet_metrics.exposition`: the
  summary from the delta-kept counter cells, rollouts, projection status, log and account info,
  rendered by prometheus_client), in process, without HTTP;
- scan: what a scrape would cost if it counted devices per site and state over the `devices`
  table (one GROUP BY) — the peer that a delta-kept gauge avoids.

It prints p50/p99 of each, ours/raw, and scan/ours; ours stays flat as the fleet grows, scan grows
with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

from benchmarks.projections import generate
from projections.api.fleet_metrics import exposition
from projections.api.queries import ReadModels
from projections.fleet.store import FleetProjection
from projections.runner import create_pool, rebuild
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.eventlog import EventLog

SCAN = ("SELECT site_id, count(*), count(*) FILTER (WHERE online), count(*) FILTER (WHERE NOT online), "
        "count(*) FILTER (WHERE health = 'degraded'), count(*) FILTER (WHERE health = 'failed'), "
        "count(*) FILTER (WHERE drifted_since IS NOT NULL), count(*) FILTER (WHERE stuck) "
        "FROM rm_fleet.devices WHERE registered AND NOT retired GROUP BY site_id")


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def one_size(devices: int, scrapes: int) -> dict[str, float]:
    """Build a fleet of `devices` and time the scrapes."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    ns = await EmbeddedNats(tmp / "nats").start()
    pg = await EmbeddedPostgres(tmp / "pg").start()
    try:
        url = await pg.create_database("bench")
        nc = await nats.connect(ns.url)
        log = EventLog(nc)
        await log.ensure_stream()
        head, took = await generate(log, devices, 0, datetime.now(UTC), 4)
        pool = await create_pool(url, min_size=1, max_size=4)
        started = time.perf_counter()
        await rebuild(pool, log, FleetProjection())  # (the changes projection plays no part in a scrape)
        print(f"{devices:,} devices: {head:,} events appended in {took:.0f} s, projected in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        models = ReadModels(pool, log)
        text = await exposition(models)
        assert b"fleet_devices{" in text, text[:500]

        async def raw() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            await log.js.stream_info(log.stream)

        async def scan() -> None:
            async with pool.acquire() as conn:
                await conn.fetch(SCAN)

        times: dict[str, list[float]] = {"raw": [], "ours": [], "scan": []}
        for _ in range(scrapes):
            times["raw"].append(await _timed(raw))
            times["ours"].append(await _timed(lambda: exposition(models)))
            times["scan"].append(await _timed(scan))
        await pool.close()
        await nc.close()
        figures = {f"{name}_{q}": _ms(values, p) for name, values in times.items()
                   for q, p in (("p50", 0.5), ("p99", 0.99))}
        figures["ours_vs_raw"] = statistics.median(o / r for o, r in zip(times["ours"], times["raw"], strict=True))
        figures["scan_vs_ours"] = statistics.median(s / o for s, o in zip(times["scan"], times["ours"], strict=True))
        figures["bytes"] = len(text)
        return figures
    finally:
        pg.stop()
        ns.stop()


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()}", flush=True)
    rows = []
    for devices in (int(n) for n in args.devices.split(",")):
        figures = await one_size(devices, args.scrapes)
        rows.append((devices, figures))
        print(devices, {k: round(v, 2) for k, v in figures.items()}, flush=True)
    print(f"load average {os.getloadavg()}")
    print("| devices | raw p50 / p99 ms | ours p50 / p99 ms | ours/raw | scan p50 / p99 ms | scan/ours | bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for devices, f in rows:
        print(f"| {devices:,} | {f['raw_p50']:.2f} / {f['raw_p99']:.2f} | {f['ours_p50']:.2f} / {f['ours_p99']:.2f} "
              f"| {f['ours_vs_raw']:.1f}x | {f['scan_p50']:.1f} / {f['scan_p99']:.1f} | {f['scan_vs_ours']:.1f}x "
              f"| {int(f['bytes']):,} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="10000,100000")
    parser.add_argument("--scrapes", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
