"""Benchmark of the scale-out topology (issue 11): appends on an R3 stream of a 3-node local
cluster next to R1 on one node, and failover times.

    .venv/bin/python -m benchmarks.cluster [--quick] [--rounds N] [--kills N]

- Appends: one EmbeddedNats (R1) and one EmbeddedNatsCluster from deploy/nats/ (R3, the stream
  placed on all three nodes), both `sync_interval: always`, in one temporary directory. Per round,
  interleaved: raw `js.publish` awaited one at a time (the raw limit of each side), then
  `EventLog.append` of one new aggregate per call, then `EventLog.append_batch` of 1,000 events.
  The ratio R3 / R1 is the median of the per-round ratios.
- Append failover: a writer appends one event after another; the stream's leader node (asked with
  `$JS.API.STREAM.INFO`) is killed with SIGKILL; the time until an append sent after the kill is
  acknowledged. The node is restarted and caught up before the next kill.
- Lease failover: `fleet up --cluster 3` (Supervisor) with 300 simulated devices and a long
  rollout; the rollout service instance holding the `rollout-ticks` lease is killed with SIGKILL;
  the time until another instance holds the lease, and until the rollout assigns more devices.
Figures are p50 and max over the kills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from shared.embedded import EmbeddedNats
from shared.embedded_cluster import EmbeddedNatsCluster, stream_leader
from shared.envelope import Envelope, seal
from shared.errors import FleetError
from shared.eventlog import EventLog, Write
from shared.events.registry import SiteAdded
from shared.subjects import EVENTS_STREAM, event_subject
from shared.times import utcnow

_counter = [0]


def fresh(n: int) -> list[Envelope]:
    out = []
    for _ in range(n):
        _counter[0] += 1
        site = f"b{_counter[0]}"
        out.append(seal(SiteAdded(site_id=site, name=site), actor="bench", at=utcnow()))
    return out


async def raw_single(nc: NATS, n: int) -> float:
    js = nc.jetstream()
    payload = b"x" * 300
    started = time.perf_counter()
    for i in range(n):
        await js.publish(f"fleet.evt.raw.{i % 100}", payload)
    return time.perf_counter() - started


async def our_single(log: EventLog, n: int) -> float:
    started = time.perf_counter()
    for envelope in fresh(n):
        await log.append(event_subject("site", envelope.aggregate_id), [envelope], 0)
    return time.perf_counter() - started


async def our_batch(log: EventLog, batches: int) -> float:
    elapsed = 0.0
    for _ in range(batches):
        events = fresh(1000)
        writes = [Write(event_subject("site", e.aggregate_id), [e], 0) for e in events]
        started = time.perf_counter()
        await log.append_batch(writes)
        elapsed += time.perf_counter() - started
    return elapsed


def pct(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


async def appends(tmp: Path, rounds: int, singles: int, batches: int) -> list[str]:
    single = EmbeddedNats(tmp / "r1")
    await single.start()
    cluster = EmbeddedNatsCluster(tmp / "r3")
    await cluster.start()
    nc1 = await nats.connect(single.url)
    nc3 = await cluster.connect()
    try:
        log1, log3 = EventLog(nc1), EventLog(nc3)
        await log1.ensure_stream(1)
        await log3.ensure_stream(3)
        rates: dict[str, list[float]] = {}
        for r in range(rounds):
            print(f"append round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            for key, coro in (("raw R1", raw_single(nc1, singles)), ("raw R3", raw_single(nc3, singles)),
                              ("single R1", our_single(log1, singles)), ("single R3", our_single(log3, singles))):
                rates.setdefault(key, []).append(singles / await coro)
            for key, log in (("batch R1", log1), ("batch R3", log3)):
                rates.setdefault(key, []).append(batches * 1000 / await our_batch(log, batches))
    finally:
        await nc1.close()
        await nc3.close()
        single.stop()
        cluster.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}

    def ratio(a: str, b: str) -> str:
        values = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    return [
        "| operation | R1 events/s | R3 events/s | R3 / R1 (range) | goal |",
        "|---|---:|---:|---:|---|",
        f"| raw js.publish, one at a time (the raw limit) | {med['raw R1']:,.0f} | {med['raw R3']:,.0f} | "
        f"{ratio('raw R3', 'raw R1')} | - |",
        f"| single append (EventLog.append) | {med['single R1']:,.0f} | {med['single R3']:,.0f} | "
        f"{ratio('single R3', 'single R1')} | >= 0.5x |",
        f"| atomic batch of 1,000 (EventLog.append_batch) | {med['batch R1']:,.0f} | {med['batch R3']:,.0f} | "
        f"{ratio('batch R3', 'batch R1')} | >= 0.5x |",
        f"| ours / raw on R3, single append | | | {med['single R3'] / med['raw R3']:.2f}x | - |",
    ]


async def append_failover(tmp: Path, kills: int) -> list[float]:
    cluster = EmbeddedNatsCluster(tmp / "failover")
    await cluster.start()
    nc = await cluster.connect(reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    times = []
    try:
        log = EventLog(nc, timeout=1.0, retry_for=0.1)
        await log.ensure_stream(3)
        for k in range(kills):
            await our_single(log, 20)
            leader = await stream_leader(nc, EVENTS_STREAM)
            index = cluster.index_of(leader)
            cluster.kill(index)
            killed = time.perf_counter()
            while True:
                envelope = fresh(1)[0]
                try:
                    await log.append(event_subject("site", envelope.aggregate_id), [envelope], 0)
                    break
                except FleetError:
                    await asyncio.sleep(0.01)
            times.append(time.perf_counter() - killed)
            print(f"append failover {k + 1}/{kills}: {times[-1]:.2f} s (leader {leader})", file=sys.stderr, flush=True)
            await cluster.start_node(index)
            await cluster.wait_ready()
            await asyncio.sleep(1.0)  # let the restarted node catch up before the next kill
    finally:
        await nc.close()
        cluster.stop()
    return times


async def lease_failover(tmp: Path, kills: int) -> tuple[list[float], list[float], float]:
    from fleet.supervisor import Supervisor
    from services.agent.simulator import FleetSimulator, SimOptions
    from services.rollout.main import TICKS_LEASE
    from shared.commands import CommandClient
    from shared.config import load_settings
    from shared.lease import holder_of

    settings = load_settings({"data_dir": str(tmp / "up"), "heartbeat_interval": 1.0, "offline_after": 10,
                              "drift_grace": 10.0}, env={})
    supervisor = Supervisor(settings, cluster=3)
    took, progressed = [], []
    await supervisor.start()
    assert supervisor.cluster is not None
    nc = await supervisor.cluster.connect(reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                                          user_credentials=supervisor.admin_creds)
    sim = FleetSimulator(nc, SimOptions(devices=300, sites=6, interval=1.0, apply_delay=0.1, seed=1))
    try:
        client = CommandClient(nc, actor="operator:bench", timeout=10)
        await client.wait_ready("registry", "snapshot", "rollout", timeout=120)
        await sim.start()
        snap = (await client.send("snapshot", "create", {"name": "bench", "config": {"v": 1}})).result
        waves = ",".join(str(p) for p in range(2, 101, 2))  # 50 waves: long enough for every kill
        await client.send("rollout", "start", {"rollout_id": "r-bench", "snapshot_id": snap["snapshot_id"],
                                               "target": "", "waves": waves, "bake_seconds": 0.5, "max_in_flight": 50})

        async def assigned() -> int:
            while True:  # as a client does through a failover: ask again (any instance answers)
                try:
                    reply = await client.send("rollout", "get", {"rollout_id": "r-bench"}, timeout=2.0)
                    return int(reply.result["assigned"])
                except FleetError as exc:
                    print(f"  rollout get: {exc}", file=sys.stderr, flush=True)

        for k in range(kills):
            before = await assigned()
            while await assigned() == before:  # noqa: ASYNC110 - polling other processes: it is moving
                await asyncio.sleep(0.1)
            holder = await holder_of(nc, TICKS_LEASE)
            assert holder is not None
            part = supervisor.part_holding(holder)
            proc = supervisor.parts[part].proc if part else None
            assert proc is not None, holder
            pid = proc.pid
            os.kill(pid, signal.SIGKILL)
            killed = time.perf_counter()
            at_kill = await assigned()
            # held again: by the other instance, or by the killed slot restarted (same name)
            while not _alive(supervisor, now := await holder_of(nc, TICKS_LEASE), pid):  # noqa: ASYNC110 - polling other processes
                await asyncio.sleep(0.05)
            took.append(time.perf_counter() - killed)
            while await assigned() <= at_kill:  # noqa: ASYNC110 - polling other processes
                await asyncio.sleep(0.05)
            progressed.append(time.perf_counter() - killed)
            print(f"lease failover {k + 1}/{kills}: held again after {took[-1]:.2f} s by {now}, rollout "
                  f"progressing after {progressed[-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        await sim.stop()
        await nc.close()
        await supervisor.stop()
    return took, progressed, settings.lease_ttl


def _alive(supervisor: Any, holder: str | None, killed: int) -> bool:
    """A lease holder that is a live process other than the one killed."""
    part = supervisor.part_holding(holder) if holder else None
    proc = supervisor.parts[part].proc if part else None
    return proc is not None and proc.pid != killed and proc.returncode is None


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-cluster-") as tmp:
        rows = await appends(Path(tmp), args.rounds, args.singles, args.batches)
        failovers = await append_failover(Path(tmp), args.kills)
        with contextlib.suppress(KeyboardInterrupt):
            took, progressed, ttl = await lease_failover(Path(tmp), args.kills)
    print(f"\nCluster benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; 3 nats-server nodes and 1 on loopback, "
          "sync_interval: always\n")
    print("\n".join(rows))
    print()
    print("| failover | measured | goal |")
    print("|---|---|---|")
    print(f"| stream leader killed -> appends acknowledged again | {pct(failovers)} | <= 5 s |")
    print(f"| rollout lease holder killed -> lease held again (FLEET_LEASE_TTL={ttl:g}s) | {pct(took)} | - |")
    print(f"| rollout lease holder killed -> rollout assigning again | {pct(progressed)} | <= 10 s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round, one kill")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.kills, args.singles, args.batches = 1, 1, 50, 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
