"""Rollout benchmark (issue 6): N simulated devices, zero bake, the embedded server with its
durable settings. Measures, in one run:

- raw: atomic batches of 1,000 KV puts of desired-state values, hand-written with nats-py (the
  limit DESIGN §4 names for writing desired state);
- ours: a rollout of one snapshot to all N devices — assignment rate (devices/s for which the
  desired event was appended *and* the KV value written) and the time from `start` until every
  device reports the new snapshot and the rollout completes.

The registry, snapshot, drift and rollout services run as separate processes (`fleet service
NAME`), as `fleet up` runs them; the simulator runs here.

    .venv/bin/python -m benchmarks.rollout [--devices 100000] [--interval 10] [--max-in-flight 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

from services.agent.simulator import FleetSimulator, SimOptions
from shared.commands import CommandClient
from shared.configs import config_hash
from shared.desired import ensure_bucket
from shared.devices import DESIRED_ENCODER, DesiredState
from shared.embedded import EmbeddedNats, die_with_parent
from shared.eventlog import EventLog


async def raw_kv_puts(nc: nats.NATS, count: int) -> float:
    """Atomic batches of 1,000 puts to `$KV.fleet_desired.<key>`, hand-written; returns puts/s."""
    config = {"app": {"image": "x:1", "workers": 4}}
    digest = config_hash(config)
    payloads = [DESIRED_ENCODER.encode(DesiredState(device_id=f"raw-{i}", snapshot_id="raw", config=config,
                                                    config_hash=digest, revision=1)) for i in range(count)]
    started = time.perf_counter()
    for offset in range(0, count, 1000):
        chunk = payloads[offset:offset + 1000]
        batch = f"raw-{offset}"
        for index, payload in enumerate(chunk, 1):
            subject = f"$KV.fleet_desired.raw-{offset + index - 1}"
            headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(index)}
            if index == len(chunk):
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, payload, timeout=30, headers=headers)
                assert b'"error"' not in reply.data, reply.data
            elif index == 1:
                await nc.request(subject, payload, timeout=30, headers=headers)
            else:
                await nc.publish(subject, payload, headers=headers)
    return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-rollout-"))
    server = await EmbeddedNats(work / "nats").start()
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_DATA_DIR": str(work), "FLEET_LOG_LEVEL": "info",
           "FLEET_HEARTBEAT_INTERVAL": str(args.interval), "FLEET_DRIFT_GRACE": "60s"}
    procs: list[subprocess.Popen[bytes]] = []
    nc = await nats.connect(server.url, max_reconnect_attempts=-1)
    sim: FleetSimulator | None = None
    try:
        await EventLog(nc).ensure_stream()
        await ensure_bucket(nc)
        raw = await raw_kv_puts(nc, args.devices)
        print(f"raw atomic-batched KV puts: {raw:,.0f}/s", file=sys.stderr)
        for name in ("registry", "snapshot", "drift", "rollout"):
            procs.append(subprocess.Popen(  # noqa: ASYNC220 - started once, outside the timed part
                [sys.executable, "-m", "fleet", "service", name], env=env,
                                          stdout=(work / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                                          preexec_fn=die_with_parent))  # noqa: PLW1509
        client = CommandClient(nc, actor="operator:bench", timeout=120)
        for _ in range(300):
            try:
                await client.send("rollout", "list", {})
                await client.send("registry", "list_sites", {})
                break
            except Exception:
                await asyncio.sleep(0.2)
        sim = FleetSimulator(nc, SimOptions(devices=args.devices, sites=args.sites, interval=args.interval,
                                            apply_delay=0.5, seed=1, prefix="bench"))
        started = time.perf_counter()
        await sim.start()
        print(f"registered and started {args.devices:,} simulated devices in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
        snap = (await client.send("snapshot", "create", {"name": "bench", "config": {"app": {"v": 2}}})).result
        await asyncio.sleep(args.interval + 1)  # every device has heartbeated once: the drift service knows it
        assert server.proc is not None
        parts = {"nats-server": psutil.Process(server.proc.pid), "benchmark + simulator": psutil.Process(),
                 **{name: psutil.Process(proc.pid) for name, proc in zip(
                     ("registry", "snapshot", "drift", "rollout"), procs, strict=True)}}
        cpu_before = {name: sum(proc.cpu_times()[:2]) for name, proc in parts.items()}
        cpu_assigned: dict[str, float] = {}
        t0 = time.perf_counter()
        await client.send("rollout", "start", {"rollout_id": "r-bench", "snapshot_id": snap["snapshot_id"],
                                               "waves": "100", "max_in_flight": args.max_in_flight,
                                               "bake": 0, "apply_timeout": "10m", "min_healthy": "99%"})
        assigned_at = None
        status: dict[str, object] = {}
        while True:
            status = (await client.send("rollout", "get", {"rollout_id": "r-bench"})).result
            if assigned_at is None and status["assigned"] == args.devices:
                assigned_at = time.perf_counter() - t0
                cpu_assigned = {name: sum(proc.cpu_times()[:2]) - cpu_before[name] for name, proc in parts.items()}
            if status["status"] in ("completed", "paused", "rolled_back"):
                break
            await asyncio.sleep(0.1)
        done = time.perf_counter() - t0
        reporting = sum(1 for s in sim.snapshot if s == snap["snapshot_id"])
        assert assigned_at is not None
        ours = args.devices / assigned_at
        print()
        print(f"Rollout of one snapshot to {args.devices:,} simulated devices ({args.sites} sites, heartbeat "
              f"every {args.interval:g}s, apply 0.5s, max_in_flight {args.max_in_flight:,}, zero bake)")
        print("| measure | raw | ours | ratio | goal | met? |")
        print("|---|---:|---:|---:|---:|---|")
        print(f"| assignment rate, devices/s (desired event appended + KV value written) | {raw:,.0f} KV puts/s "
              f"| {ours:,.0f} | {ours / raw:.2f}x | >= 0.5x | {'yes' if ours / raw >= 0.5 else '**NO**'} |")
        print(f"| start -> every device reports the new snapshot, rollout {status['status']} | - | {done:.1f} s | - "
              f"| <= 60 s | {'yes' if done <= 60 and status['status'] == 'completed' else '**NO**'} |")
        print(f"| devices reporting the new snapshot at the end | - | {reporting:,} / {args.devices:,} | - | all | "
              f"{'yes' if reporting == args.devices else '**NO**'} |")
        print(f"| for reference: AWS IoT Jobs caps a rollout at 1,000 devices/minute = {args.devices / 1000:.0f} min "
              f"for this fleet | | | | | |")
        print()
        print(f"CPU seconds used during the assignment ({assigned_at:.1f} s wall, 2 cores = "
              f"{2 * assigned_at:.1f} CPU s at most): " + ", ".join(
                  f"{name} {seconds:.1f}" for name, seconds in sorted(cpu_assigned.items(), key=lambda kv: -kv[1])))
    finally:
        if sim is not None:
            await sim.stop()
        await nc.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        server.stop()
        print(f"service logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))
