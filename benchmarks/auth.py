"""What NATS authentication costs the hot paths (issue 10): the same work against an open
nats-server and against one in JWT mode, each client under the identity Fleetplane gives it.

    .venv/bin/python -m benchmarks.auth [--rounds N] [--quick]

Two EmbeddedNats (durable, `sync_interval: always`) run side by side; each round does every path
on both in small blocks, open and JWT alternating block by block, so load from elsewhere on the
machine falls on both alike. The
"raw limit" of each row is the open server doing the same work; the ratio is JWT / open (1.00 =
auth costs nothing). Paths:
- single append: `EventLog.append` of one event as `service:registry` (permission check on a
  `fleet.evt.device.>` allow list, plus the publish-ack reply to `_INBOX`).
- atomic batch of 1,000 events: `EventLog.append_batch` as `service:registry`.
- desired-state puts: `put_desired` of 1,000 keys (atomic batch on the KV stream) as
  `service:rollout`.
- heartbeats: a simulator-role client publishes heartbeats of many devices (core NATS) and a
  `service:drift` client receives them on `fleet.hb.>`; received per second.
- replay: `EventLog.replay` of the whole log as `service:projections` (ordered consumer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from benchmarks.eventlog import history, our_batch, our_single, uid
from shared.auth.authority import Authority, inbox_of_creds
from shared.desired import ensure_bucket, put_desired
from shared.devices import DesiredState
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog, Write

# What one side's paths work with: registry and projections logs, rollout, simulator and drift clients.
Clients = tuple[EventLog, EventLog, NATS, NATS, NATS]


class Side:
    """One server and the clients of one run, open or under JWT."""

    def __init__(self, name: str, server: EmbeddedNats, authority: Authority | None, tmp: Path) -> None:
        self.name, self.server, self.authority, self.tmp = name, server, authority, tmp
        self.conns: dict[str, NATS] = {}

    async def connect(self, role: str, name: str) -> NATS:
        options: dict[str, object] = {"pending_size": 64 * 1024 * 1024}
        if self.authority is not None:
            path = self.tmp / f"{self.name}-{role.replace(':', '-')}.creds"
            self.authority.write_creds(path, self.authority.issue(role, name))
            options["user_credentials"] = str(path)
            prefix = inbox_of_creds(path)
            if prefix is not None:
                options["inbox_prefix"] = prefix
        nc = await nats.connect(self.server.url, **options)
        self.conns[role] = nc
        return nc

    async def close(self) -> None:
        for nc in self.conns.values():
            await nc.close()


async def heartbeats(sim: NATS, drift: NATS, n: int) -> float:
    """Seconds for `n` heartbeats of n/100 devices to be published and all received."""
    got = 0
    done = asyncio.Event()

    async def on(msg: object) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub = await drift.subscribe("fleet.hb.>", cb=on, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await drift.flush()
    body = (b'{"device_id":"d","site":"s","seq":1,"at":"2026-11-30T00:00:00.000000Z","snapshot_id":null,'
            b'"config_hash":null,"health":"ok","metrics":{"cpu":0.5},"agent_version":"bench"}')
    started = time.perf_counter()
    for i in range(n):
        await sim.publish(f"fleet.hb.s{i % 50}.d{i % (n // 100 or 1)}", body)
    await sim.flush()
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed


async def replay(log: EventLog, n: int) -> float:
    """Read the first `n` events of the log, typed."""
    count = 0
    started = time.perf_counter()
    async for recorded in log.replay(1, n):
        count += recorded.event is not None
    assert count == n
    return time.perf_counter() - started


async def puts(rollout: NATS, n: int) -> float:
    stamp = uid()
    values = [DesiredState(device_id=f"d{stamp}{i}", snapshot_id="s", config={"v": i}, config_hash="h")
              for i in range(n)]
    started = time.perf_counter()
    await put_desired(rollout, values)
    return time.perf_counter() - started


async def bench(rounds: int, quick: bool, tmp: Path) -> list[tuple[str, float, float, list[float]]]:
    authority = Authority.load_or_create(tmp / "secrets")
    sides = [Side("open", await EmbeddedNats(tmp / "open").start(), None, tmp),
             Side("jwt", await EmbeddedNats(tmp / "jwt", authority=authority).start(), authority, tmp)]
    rates: dict[tuple[str, str], list[float]] = {}
    single, batch, hb, replay_n = (50, 1000, 20_000, 5_000) if quick else (200, 1000, 100_000, 20_000)
    try:
        logs: dict[str, Clients] = {}
        for side in sides:
            admin = await side.connect("admin", "admin")
            await EventLog(admin).ensure_stream()
            await ensure_bucket(admin)
            registry = EventLog(await side.connect("service:registry", "registry"))
            projections = EventLog(await side.connect("service:projections", "projections"))
            logs[side.name] = (registry, projections, await side.connect("service:rollout", "rollout"),
                               await side.connect("simulator", "bench"), await side.connect("service:drift", "drift"))
            for start in range(0, replay_n, 1000):  # the log the replay rows read
                await registry.append_batch([Write(
                    f"fleet.evt.device.fill{start}", history(f"fill{start}", 1000), 0)])
        # Each path runs in small blocks, open and JWT alternating block by block (and which goes
        # first alternating too), so that load from elsewhere on the machine falls on both alike.
        paths: list[tuple[str, int, int, Callable[[Clients], Awaitable[float]]]] = [
            ("single append (service:registry)", 5, single, lambda lg: our_single(lg[0], single)),
            (f"atomic batch of {batch} (service:registry)", 10, batch, lambda lg: our_batch(lg[0], batch)),
            ("1,000 desired-state puts (service:rollout)", 10, 1000, lambda lg: puts(lg[2], 1000)),
            ("heartbeats simulator -> drift", 3, hb, lambda lg: heartbeats(lg[3], lg[4], hb)),
            (f"replay {replay_n:,} events (service:projections)", 3, replay_n,
             lambda lg: replay(lg[1], replay_n)),
        ]
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            for path, blocks, n, work in paths:
                seconds = {side.name: 0.0 for side in sides}
                for b in range(blocks):
                    for side in (sides if (r + b) % 2 == 0 else sides[::-1]):
                        seconds[side.name] += await work(logs[side.name])
                for side in sides:
                    rates.setdefault((path, side.name), []).append(n * blocks / seconds[side.name])
    finally:
        for side in sides:
            await side.close()
            side.server.stop()
    rows = []
    for path in dict.fromkeys(p for p, _ in rates):
        open_, jwt = rates[(path, "open")], rates[(path, "jwt")]
        ratios = [j / o for j, o in zip(jwt, open_, strict=True)]
        rows.append((path, statistics.median(open_), statistics.median(jwt), ratios))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-auth-") as tmp:
        rows = asyncio.run(bench(args.rounds, args.quick, Path(tmp)))
    print(f"\nAuth cost benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {args.rounds} rounds{' (quick)' if args.quick else ''}.\n"
          "per second: median of the rounds; jwt / open: median (range) of the per-round ratios.\n")
    print("| path | open server /s (raw limit) | JWT mode /s | jwt / open (range) |")
    print("|---|---:|---:|---:|")
    for path, open_rate, jwt_rate, ratios in rows:
        print(f"| {path} | {open_rate:,.0f} | {jwt_rate:,.0f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
