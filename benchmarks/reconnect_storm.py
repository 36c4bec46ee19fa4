"""Reconnect storm (issue 21): a fleet of simulated devices loses nats-server at once (the server is
stopped and started again), with and without the agent's jittered backoff.

    .venv/bin/python -m benchmarks.reconnect_storm [--devices 100000 --interval 10 --outage 10]

For each policy — `fixed` (every device retries every 0.5 s, what the agent did before) and
`jitter` (the agent's policy now: full jitter over a window doubling from 0.5 s to 15 s) — a fresh
server, `--devices` devices registered with a desired state, the drift service in this process and
the simulator (`FleetSimulator`, one connection) in a child process. Once every device is online,
the server is stopped for `--outage` seconds and started again. The simulator draws each device's
reconnection attempts from the policy (`fleet_agent.backoff.attempts_until`; devices resume
heartbeating at their first attempt after the server is back). Reported, per policy:

- time from the server being back until a heartbeat of every device has arrived again (a
  subscription in this process), against the floor of the same run: one heartbeat interval;
- peak device connection attempts per second during the outage and after it (modelled: the
  simulator shares one real connection, so these are the attempts a real fleet would make);
- peak reconnections per second after the server is back (modelled likewise);
- DeviceCameOnline / DeviceWentOffline events the drift service wrote (measured), and their peak
  per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from benchmarks.drift import SITES, register_fleet
from services.drift.domain import Policy
from services.drift.handlers import DriftService
from shared.desired import ensure_bucket
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog

ROOT = Path(__file__).resolve().parents[1]


async def until_connected(nc: NATS) -> None:
    """Wait for a connection's reconnection (a benchmark polls; nothing to assert)."""
    while not nc.is_connected:  # noqa: ASYNC110 - nats-py offers no awaitable for it
        await asyncio.sleep(0.01)


def per_second_peak(times: list[float]) -> int:
    """The most events that fall into one whole second."""
    return max(Counter(int(t) for t in times).values(), default=0)


async def simulate_role(url: str, devices: int, interval: float, policy: str) -> None:
    """The child: run the simulator until stdin closes; after each outage print what the policy drew."""
    from services.agent.simulator import FleetSimulator, SimOptions

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.05)
    sim = FleetSimulator(nc, SimOptions(devices=devices, sites=SITES, interval=interval, apply_delay=0.0,
                                        seed=42, prefix="b", register=False, reconnect=policy))
    await sim.start()
    print(json.dumps({"started": True}), flush=True)
    reported = 0
    stdin_closed = asyncio.create_task(asyncio.to_thread(sys.stdin.read))
    while not stdin_closed.done():
        await asyncio.sleep(0.2)
        if sim.stats.outages > reported:
            back, tries = sim.stats.back[reported], sim.stats.retries[reported]
            print(json.dumps({"outage": {"last_back": max(back), "first_back": min(back),
                                         "attempts": len(tries), "attempts_peak": per_second_peak(tries),
                                         "back_peak": per_second_peak(back)}}), flush=True)
            reported += 1
    await sim.stop()
    await nc.close()


async def storm(tmp: Path, args: argparse.Namespace, policy: str) -> dict[str, Any]:
    server = await EmbeddedNats(tmp / f"nats-{policy}").start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    log = EventLog(nc)
    await log.ensure_stream()
    await ensure_bucket(nc)
    await register_fleet(nc, log, args.devices)
    drift = DriftService(nc, log, Policy(interval=args.interval, offline_after=3, drift_grace=60.0,
                                         reconcile_backoff=args.interval, reconcile_max_tries=5))
    await drift.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.reconnect_storm", "--role", "simulate", "--url", server.url, "--devices",
        str(args.devices), "--interval", str(args.interval), "--policy", policy,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            await lines.put(json.loads(line))

    def online() -> int:
        return sum(d.online for d in drift.devices.values())


    reader = asyncio.create_task(read())
    try:
        await lines.get()  # started
        while online() < args.devices:  # noqa: ASYNC110 - a benchmark samples the service's state
            await asyncio.sleep(0.2)
        before = dict(drift.stats.events)
        server.stop()
        await asyncio.sleep(args.outage)
        await server.start()
        back_at = time.monotonic()
        heard: set[str] = set()  # devices whose heartbeat arrived since the server is back
        last_heard = [0.0]

        async def hear(msg: Msg) -> None:
            device = msg.subject.rsplit(".", 1)[-1]
            if device not in heard:
                heard.add(device)
                last_heard[0] = time.monotonic() - back_at
        await until_connected(nc)
        listener = await nc.subscribe("fleet.hb.*.*", cb=hear, pending_msgs_limit=1_000_000, pending_bytes_limit=-1)
        samples: list[tuple[float, int, int]] = []  # (s since back, came online, went offline) so far
        all_online: float | None = None
        while time.monotonic() - back_at < args.outage + args.settle + 120:
            await asyncio.sleep(0.1)
            events = drift.stats.events
            samples.append((time.monotonic() - back_at,
                            events.get("DeviceCameOnline", 0) - before.get("DeviceCameOnline", 0),
                            events.get("DeviceWentOffline", 0) - before.get("DeviceWentOffline", 0)))
            if all_online is None and len(heard) == args.devices:
                all_online = last_heard[0]
            if all_online is not None and time.monotonic() - back_at > all_online + args.settle:
                break
        await listener.unsubscribe()
        await drift.flush()
        outage = (await lines.get())["outage"]
        came = samples[-1][1] if samples else 0
        went = samples[-1][2] if samples else 0

        def peak(column: int) -> int:
            """The most events in any one second of the samples."""
            best = 0
            for k, sample in enumerate(samples):
                later = next((s for s in samples[k:] if s[0] >= sample[0] + 1.0), None)
                if later is not None:
                    best = max(best, int(later[column]) - int(sample[column]))
            return best
        return {"policy": policy, "all_online_after": all_online, "floor": args.interval,
                "came_online": came, "went_offline": went, "came_online_peak": peak(1),
                "went_offline_peak": peak(2), **outage}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
        await reader
        await drift.stop()
        await nc.close()
        server.stop()


async def main(args: argparse.Namespace) -> None:
    print(f"# reconnect storm — {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.devices} devices, heartbeat every {args.interval:g}s (offline after 3), outage {args.outage:g}s",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-storm-") as tmp:
        for policy in ("fixed", "jitter"):
            result = await storm(Path(tmp), args, policy)
            print(json.dumps(result), flush=True)
            results.append(result)
    print("\n| policy | every device heard again, s after the server is back | floor: one interval (s) | ratio | "
          "attempts/s peak | reconnects/s peak | last device back (s after the loss) | "
          "DeviceCameOnline (peak/s) | DeviceWentOffline (peak/s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        took = r["all_online_after"]
        ratio = f"{took / r['floor']:.1f}x" if took else "n/a"
        print(f"| {r['policy']} | {took if took is None else round(took, 1)} | {r['floor']:g} | {ratio} | "
              f"{r['attempts_peak']:,} | {r['back_peak']:,} | {r['last_back']:.1f} | "
              f"{r['came_online']:,} ({r['came_online_peak']:,}) | {r['went_offline']:,} ({r['went_offline_peak']:,}) |")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["main", "simulate"], default="main")
    parser.add_argument("--url", default="")
    parser.add_argument("--policy", choices=["fixed", "jitter"], default="jitter")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval (the default setting)")
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds watched after all are online")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.role == "simulate":
        asyncio.run(simulate_role(arguments.url, arguments.devices, arguments.interval, arguments.policy))
    else:
        asyncio.run(main(arguments))
