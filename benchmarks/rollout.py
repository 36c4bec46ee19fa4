"""Rollout benchmark (issue 6): N simulated devices, zero bake, the embedded server with its
durable settings. Two phases, each with the raw rate measured right before ours:

- raw: atomic batches of 1,000 KV puts of desired-state values, hand-written with nats-py's
  public API (the limit DESIGN §4 names for writing desired state);
- quiet fleet: the devices are registered but not running; a rollout of one snapshot to all N —
  assignment rate (devices/s for which the desired event was appended *and* the KV value written);
- live fleet: every simulated device applies what it is given and heartbeats; a rollout of a
  second snapshot — assignment rate, and the time from `start` until every device reports the new
  snapshot and the rollout completes.

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
from nats.aio.client import Client as NATS

from services.agent.simulator import FleetSimulator, SimOptions
from shared.auth.authority import Authority
from shared.commands import CommandClient
from shared.configs import config_hash
from shared.desired import ensure_bucket
from shared.devices import DESIRED_ENCODER, DesiredState
from shared.embedded import EmbeddedNats, die_with_parent
from shared.eventlog import EventLog


async def raw_kv_puts(nc: NATS, count: int, tag: str) -> float:
    """Atomic batches of 1,000 puts to `$KV.fleet_desired.raw-<tag>-<i>`, hand-written with nats-py's
    public API; returns puts/s."""
    config = {"app": {"image": "x:1", "workers": 4}}
    digest = config_hash(config)
    payloads = [DESIRED_ENCODER.encode(DesiredState(device_id=f"raw-{tag}-{i}", snapshot_id="raw", config=config,
                                                    config_hash=digest, revision=1)) for i in range(count)]
    started = time.perf_counter()
    for offset in range(0, count, 1000):
        chunk = payloads[offset:offset + 1000]
        batch = f"raw-{tag}-{offset}"
        for index, payload in enumerate(chunk, 1):
            subject = f"$KV.fleet_desired.raw-{tag}-{offset + index - 1}"
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


class Phase:
    """One measured rollout: its raw rate measured right before it, and CPU per process."""

    def __init__(self, name: str, raw: float, parts: dict[str, psutil.Process]) -> None:
        self.name, self.raw, self.parts = name, raw, parts
        self.before = self.cpu()
        self.started = time.perf_counter()
        self.assigned_at: float | None = None
        self.cpu_assigned: dict[str, float] = {}

    def cpu(self) -> dict[str, float]:
        return {name: sum(proc.cpu_times()[:2]) for name, proc in self.parts.items()}

    def assigned(self) -> None:
        self.assigned_at = time.perf_counter() - self.started
        self.cpu_assigned = {name: used - self.before[name] for name, used in self.cpu().items()}

    def rate(self, devices: int) -> float:
        assert self.assigned_at is not None
        return devices / self.assigned_at

    def cpu_line(self) -> str:
        assert self.assigned_at is not None
        return (f"CPU seconds during the {self.name} assignment ({self.assigned_at:.1f} s wall, at most "
                f"{2 * self.assigned_at:.1f} on 2 cores): " + ", ".join(
                    f"{name} {seconds:.1f}" for name, seconds in sorted(self.cpu_assigned.items(), key=lambda kv: -kv[1])))


async def rollout(client: CommandClient, rollout_id: str, snapshot: str, args: argparse.Namespace, phase: Phase,
                  until: tuple[str, ...]) -> dict[str, object]:
    """Start a one-wave rollout to every device; poll until all are assigned, then until `until`."""
    await client.send("rollout", "start", {"rollout_id": rollout_id, "snapshot_id": snapshot, "waves": [100],
                                           "max_in_flight": args.max_in_flight, "bake_seconds": 0, "apply_timeout_seconds": 600,
                                           "min_healthy": 0.99})
    while True:
        status: dict[str, object] = (await client.send("rollout", "get", {"rollout_id": rollout_id})).result
        if phase.assigned_at is None and status["assigned"] == args.devices:
            phase.assigned()
            if not until:
                return status
        if status["status"] in until:
            return status
        await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-rollout-"))
    # --auth: JWT mode as `fleet up` runs it; each service under its own identity (issue 10)
    authority = Authority.load_or_create(work / "secrets") if args.auth else None
    server = await EmbeddedNats(work / "nats", authority=authority).start()
    env = {**os.environ, "FLEET_NATS_URL": server.url, "FLEET_DATA_DIR": str(work), "FLEET_LOG_LEVEL": "info",
           "FLEET_HEARTBEAT_INTERVAL": str(args.interval), "FLEET_DRIFT_GRACE": "60s"}
    env.pop("FLEET_NATS_CREDS", None)
    creds: dict[str, str] = {}
    if authority is not None:
        for role, name in (("admin", "bench"), *((f"service:{n}", n) for n in ("registry", "snapshot", "drift", "rollout"))):
            creds[name] = str(authority.write_creds(work / "secrets" / f"{name}.creds", authority.issue(role, name)))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    nc = await nats.connect(server.url, max_reconnect_attempts=-1,
                            **({"user_credentials": creds["bench"]} if authority else {}))
    sim: FleetSimulator | None = None
    try:
        await EventLog(nc).ensure_stream()
        await ensure_bucket(nc)
        for name in ("registry", "snapshot", "drift", "rollout"):
            procs[name] = subprocess.Popen(  # noqa: ASYNC220 - started once, outside the timed part
                [sys.executable, "-m", "fleet", "service", name],
                env={**env, **({"FLEET_NATS_CREDS": creds[name]} if authority else {})},
                stdout=(work / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)  # noqa: PLW1509 - the child runs only a pre-resolved prctl call
        client = CommandClient(nc, actor="operator:bench", timeout=120)
        await client.wait_ready(*procs, timeout=60)
        assert server.proc is not None
        parts = {"nats-server": psutil.Process(server.proc.pid), "benchmark + simulator": psutil.Process(),
                 **{name: psutil.Process(proc.pid) for name, proc in procs.items()}}
        sim = FleetSimulator(nc, SimOptions(devices=args.devices, sites=args.sites, interval=args.interval,
                                            apply_delay=0.5, seed=1, prefix="bench"))
        started = time.perf_counter()
        await sim.register()
        print(f"registered {args.devices:,} devices in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        snaps = [(await client.send("snapshot", "create", {"name": "bench", "config": {"app": {"v": v}}})).result[
            "snapshot_id"] for v in (1, 2)]

        # 1. A quiet fleet: the devices are registered but not running, so the assignment has the
        #    machine to itself (the services, nats-server); raw is measured right before it.
        quiet = Phase("quiet-fleet", await raw_kv_puts(nc, args.devices, "quiet"), parts)
        await rollout(client, "r-quiet", snaps[0], args, quiet, ())
        await client.send("rollout", "abort", {"rollout_id": "r-quiet", "reason": "benchmark: next phase"})
        print(f"quiet fleet: raw {quiet.raw:,.0f} KV puts/s, ours {quiet.rate(args.devices):,.0f} devices/s",
              file=sys.stderr)

        # 2. The live fleet: every device runs (applies what it is given, heartbeats); the whole
        #    rollout, from start until every device reports the new snapshot.
        await sim.start()
        await asyncio.sleep(args.interval + 1)  # every device has heartbeated once: the drift service knows it
        live = Phase("live-fleet", await raw_kv_puts(nc, args.devices, "live"), parts)
        status = await rollout(client, "r-bench", snaps[1], args, live, ("completed", "paused", "rolled_back"))
        done = time.perf_counter() - live.started
        reporting = sum(1 for s in sim.snapshot if s == snaps[1])

        def ratio_row(phase: Phase, what: str) -> str:
            ours = phase.rate(args.devices)
            return (f"| assignment rate, {what}: devices/s (desired event appended + KV value written) | "
                    f"{phase.raw:,.0f} KV puts/s | {ours:,.0f} | {ours / phase.raw:.2f}x | >= 0.5x | "
                    f"{'yes' if ours / phase.raw >= 0.5 else '**NO**'} |")

        print()
        print(f"Rollout of one snapshot to {args.devices:,} simulated devices ({args.sites} sites, heartbeat "
              f"every {args.interval:g}s, apply 0.5s, max_in_flight {args.max_in_flight:,}, zero bake)")
        print("| measure | raw | ours | ratio | goal | met? |")
        print("|---|---:|---:|---:|---:|---|")
        print(ratio_row(quiet, "quiet fleet (devices registered, not running)"))
        print(ratio_row(live, "live fleet (devices applying and heartbeating meanwhile)"))
        print(f"| start -> every device reports the new snapshot, rollout {status['status']} | - | {done:.1f} s | - "
              f"| <= 60 s | {'yes' if done <= 60 and status['status'] == 'completed' else '**NO**'} |")
        print(f"| devices reporting the new snapshot at the end | - | {reporting:,} / {args.devices:,} | - | all | "
              f"{'yes' if reporting == args.devices else '**NO**'} |")
        print(f"| for reference: AWS IoT Jobs caps a rollout at 1,000 devices/minute = {args.devices / 1000:.0f} min "
              f"for this fleet | | | | | |")
        print()
        print(quiet.cpu_line())
        print(live.cpu_line())
    finally:
        if sim is not None:
            await sim.stop()
        await nc.close()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)
        server.stop()
        print(f"service logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=100_000)
    parser.add_argument("--auth", action="store_true", help="run nats-server in JWT mode, each part under its identity")
    asyncio.run(main(parser.parse_args()))
