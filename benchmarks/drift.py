"""Benchmark of heartbeat handling and drift detection (issue 5), in one run on one machine.

    .venv/bin/python -m benchmarks.drift [--devices 20000 --rounds 3 --repeat 7]
                                         [--fleet 100000 --hold 300 --interval 10 --grace 20]

Part 1, heartbeat throughput. A publisher process sends heartbeat-shaped JSON on
`fleet.hb.<site>.<device>` as fast as it can; the receiving side is either
- raw: a nats-py subscription on `fleet.hb.*.*` whose callback only counts, or
- ours: the drift service's subscription (queue group), which decodes each heartbeat, checks it
  (known device, site, seq), compares it with the device's state and desired state, updates the
  state, and queues observed-state events when something changed (1 % of heartbeats change
  health here); events are appended in atomic batches while heartbeats keep coming.
Rate = heartbeats handled / (last - first arrival). Same payloads, same server, same run; the
two measurements are interleaved `--repeat` times and the medians reported.

Part 2, a fleet held steady. `--fleet` devices registered and given a desired state (events and
KV values, as the registry and rollout would), the drift service started, and a simulator process
(`FleetSimulator`, one wildcard subscription) heartbeating every `--interval` for `--hold`
seconds. Reported: false offline transitions (DeviceWentOffline while every device kept
heartbeating: must be 0), and time from a local tamper (one device every few seconds) to the
drift service marking it drifted, against the bound grace + 2 intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import msgspec
import nats
from nats.aio.client import Client as NATS

from services.drift.domain import Policy
from services.drift.handlers import DriftService
from shared.configs import config_hash
from shared.desired import ensure_bucket, put_desired
from shared.devices import HEARTBEAT_ENCODER, DesiredState, Health, Heartbeat
from shared.embedded import EmbeddedNats
from shared.envelope import seal
from shared.eventlog import EventLog, Write
from shared.events.desired import DesiredStateAssigned
from shared.events.registry import DeviceAdded
from shared.subjects import event_subject
from shared.times import utcnow

SITES = 50
CONFIG = {"release": "2026.11", "sampling": {"hz": 10}}
HASH = config_hash(CONFIG)


def device(i: int) -> str:
    return f"b-d{i:06d}"


def site(i: int) -> str:
    return f"b-s{i % SITES:03d}"


# --- roles run in child processes -----------------------------------------------------------------


async def publish_role(url: str, devices: int, first_round: int, rounds: int) -> None:
    """Publish `rounds` heartbeats per device (1 % change health) as fast as the socket takes them:
    the NATS protocol written straight to a socket, so the publisher is never the limit."""
    import socket

    at = "2026-11-28T06:00:00.000000Z"
    chunks: list[bytes] = []
    for r in range(first_round, first_round + rounds):
        for i in range(devices):
            health: Health = "degraded" if (i + r) % 100 == 0 else "ok"
            payload = HEARTBEAT_ENCODER.encode(Heartbeat(
                device_id=device(i), site=site(i), seq=r + 1, at=at, snapshot_id="snap-1",
                config_hash=HASH, health=health, metrics={"error_rate": 0.001, "cpu": 0.4},
                agent_version="bench/1"))
            chunks.append(b"PUB fleet.hb.%s.%s %d\r\n%s\r\n" % (site(i).encode(), device(i).encode(),
                                                                   len(payload), payload))
    wire = b"".join(chunks)
    host, port = url.removeprefix("nats://").split(":")
    sock = socket.create_connection((host, int(port)))
    reader = sock.makefile("rb")
    reader.readline()  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    while reader.readline().strip() != b"PONG":
        pass
    print("ready", flush=True)
    sys.stdin.readline()  # go
    sock.sendall(wire)
    sock.sendall(b"PING\r\n")
    while reader.readline().strip() != b"PONG":
        pass
    sock.close()


async def simulate_role(url: str, devices: int, interval: float, hold: float, tamper_every: float,
                        tamper_until: float) -> None:
    """Run the simulator; tamper with one device every `tamper_every` s until `tamper_until` s
    into the hold (so each has time to be detected); print JSON lines."""
    from services.agent.simulator import FleetSimulator, SimOptions

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    sim = FleetSimulator(nc, SimOptions(devices=devices, sites=SITES, interval=interval, apply_delay=0.5,
                                        seed=42, prefix="b", register=False))
    started = time.perf_counter()
    await sim.start()
    print(json.dumps({"started": time.perf_counter() - started}), flush=True)
    k = 0
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        await asyncio.sleep(tamper_every)
        if time.monotonic() > deadline - hold + tamper_until:
            continue
        k += 1
        i = (k * 7919) % devices
        sim.tamper_with(i)
        print(json.dumps({"tampered": device(i), "at": sim.stats.tampered_at.get(device(i))}), flush=True)
    print(json.dumps({"heartbeats": sim.stats.heartbeats}), flush=True)
    await sim.stop()
    await nc.close()


# --- setup ----------------------------------------------------------------------------------------


async def register_fleet(nc: NATS, log: EventLog, devices: int) -> None:
    """Registry and desired-state events plus KV values, as the registry and rollout would write."""
    now = utcnow()
    for start in range(0, devices, 1000):
        ids = range(start, min(devices, start + 1000))
        await log.append_batch([Write(event_subject("device", device(i)), [seal(
            DeviceAdded(device_id=device(i), site_id=site(i)), actor="bench", at=now)], 0) for i in ids])
        await log.append_batch([Write(event_subject("desired", device(i)), [seal(
            DesiredStateAssigned(device_id=device(i), site_id=site(i), snapshot_id="snap-1", config_hash=HASH,
                                 revision=1), actor="bench", at=now)], 0) for i in ids])
        await put_desired(nc, [DesiredState(device_id=device(i), snapshot_id="snap-1", config=CONFIG,
                                            config_hash=HASH) for i in ids])


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.drift", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


async def wait_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return await asyncio.to_thread(proc.stdout.readline)


# --- part 1 ---------------------------------------------------------------------------------------


class Meter:
    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def hit(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now


async def run_publisher(url: str, devices: int, first_round: int, rounds: int, meter: Meter,
                        expect: int) -> None:
    proc = child("--role", "publish", "--url", url, "--devices", str(devices), "--first-round",
                 str(first_round), "--rounds", str(rounds))
    try:
        assert (await wait_line(proc)).strip() == "ready"
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        idle_since = time.perf_counter()
        seen = -1
        while meter.count < expect:
            await asyncio.sleep(0.05)
            if meter.count != seen:
                seen, idle_since = meter.count, time.perf_counter()
            elif time.perf_counter() - idle_since > 3.0:
                break  # some were dropped (slow consumer): report what arrived
    finally:
        proc.wait()


async def raw_rate(url: str, devices: int, first_round: int, rounds: int) -> tuple[float, int]:
    nc = await nats.connect(url)
    meter = Meter()

    async def cb(msg: object) -> None:
        meter.hit()
    sub = await nc.subscribe("fleet.hb.*.*", cb=cb, pending_msgs_limit=10_000_000, pending_bytes_limit=-1)
    await nc.flush()
    await run_publisher(url, devices, first_round, rounds, meter, devices * rounds)
    await sub.unsubscribe()
    await nc.close()
    return meter.count / (meter.last - meter.first), meter.count


async def drift_rate(url: str, drift: DriftService, devices: int, first_round: int,
                     rounds: int) -> tuple[float, int]:
    meter = Meter()
    handle = drift.handle_heartbeat

    def counted(subject: str, data: bytes) -> None:
        handle(subject, data)
        meter.hit()
    drift.handle_heartbeat = counted  # type: ignore[method-assign]  # counts what the service handles
    try:
        await run_publisher(url, devices, first_round, rounds, meter, devices * rounds)
    finally:
        drift.handle_heartbeat = handle  # type: ignore[method-assign]  # puts the method back
    await drift.flush()
    return meter.count / (meter.last - meter.first), meter.count


async def part1(server: EmbeddedNats, args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(server.url)
    log = EventLog(nc)
    await log.ensure_stream()
    await ensure_bucket(nc)
    await register_fleet(nc, log, args.devices)
    policy = Policy(interval=3600, offline_after=3, drift_grace=3600)  # no offline/drift noise here
    drift = DriftService(nc, log, policy)
    await drift.start()
    await nc.flush()
    # warm-up round: every device comes online (a burst of events), not measured
    await drift_rate(server.url, drift, args.devices, 0, 1)
    raw: list[float] = []
    ours: list[float] = []
    received: list[int] = []
    next_round = 1
    for _ in range(args.repeat):
        await drift.pause_heartbeats()  # the raw subscriber alone
        rate, count = await raw_rate(server.url, args.devices, next_round, args.rounds)
        await drift.serve_heartbeats()
        await nc.flush()
        raw.append(rate)
        received.append(count)
        before = drift.stats.appended
        next_round += args.rounds  # fresh seqs: the drift service has not seen these
        rate, count = await drift_rate(server.url, drift, args.devices, next_round, args.rounds)
        ours.append(rate)
        received.append(count)
        print(f"  raw {raw[-1]:,.0f}/s  drift {ours[-1]:,.0f}/s  ({drift.stats.appended - before} events)",
              flush=True)
        next_round += args.rounds
    dropped = {k: v for k, v in drift.stats.dropped.items() if v}
    await drift.stop()
    await nc.close()
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    return {"raw": statistics.median(raw), "ours": statistics.median(ours), "dropped": dropped,
            "received": received, "events": dict(drift.stats.events), "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios))}


# --- part 2 ---------------------------------------------------------------------------------------


async def part2(server: EmbeddedNats, args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(server.url)
    log = EventLog(nc)
    await log.ensure_stream()
    await ensure_bucket(nc)
    started = time.perf_counter()
    await register_fleet(nc, log, args.fleet)
    setup = time.perf_counter() - started
    policy = Policy(interval=args.interval, offline_after=3, drift_grace=args.grace,
                    reconcile_backoff=args.interval, reconcile_max_tries=5)
    started = time.perf_counter()
    drift = DriftService(nc, log, policy)
    await drift.start()
    rebuild = time.perf_counter() - started
    print(f"  {args.fleet} devices registered in {setup:.1f}s; drift service rebuilt in {rebuild:.1f}s",
          flush=True)
    proc = child("--role", "simulate", "--url", server.url, "--devices", str(args.fleet), "--interval",
                 str(args.interval), "--hold", str(args.hold), "--tamper-every", str(args.tamper_every),
                 "--tamper-until", str(args.hold - args.grace - 3 * args.interval))
    tampered: dict[str, float] = {}
    detected: dict[str, float] = {}
    sim_heartbeats = 0

    async def read_sim() -> None:
        nonlocal sim_heartbeats
        while True:
            line = await wait_line(proc)
            if not line:
                return
            item = json.loads(line)
            if "tampered" in item and item["at"]:
                tampered[item["tampered"]] = item["at"]
            if "heartbeats" in item:
                sim_heartbeats = item["heartbeats"]
            if "started" in item:
                print(f"  simulator read desired state and started in {item['started']:.1f}s", flush=True)

    reader = asyncio.create_task(read_sim())
    hold_started = time.time()
    peak_pending = 0
    while not reader.done():
        await asyncio.sleep(0.1)
        now = time.time()
        for name, at in tampered.items():
            if name not in detected and drift.devices[name].drifted:
                detected[name] = now - at
        peak_pending = max(peak_pending, drift.pending)
    await reader
    proc.wait()
    await asyncio.sleep(args.interval)
    for name, at in tampered.items():
        if name not in detected and drift.devices[name].drifted:
            detected[name] = time.time() - at
    await drift.flush()
    online = sum(d.online for d in drift.devices.values())
    events = dict(drift.stats.events)
    await drift.stop()
    await nc.close()
    times = sorted(detected.values())
    return {
        "devices": args.fleet, "held": time.time() - hold_started, "online_at_end": online,
        "false_offline": events.get("DeviceWentOffline", 0), "events": events,
        "heartbeats": sim_heartbeats, "accepted": drift.stats.accepted,
        "dropped": {k: v for k, v in drift.stats.dropped.items() if v},
        "tampered": len(tampered), "detected": len(detected),
        "detect_p50": statistics.median(times) if times else None,
        "detect_p99": times[min(len(times) - 1, int(len(times) * 0.99))] if times else None,
        "detect_max": times[-1] if times else None,
        "bound": args.grace + 2 * args.interval,
    }


async def main(args: argparse.Namespace) -> None:
    print(f"# drift benchmark — {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-drift-") as tmp:
        if not args.skip_throughput:
            server = await EmbeddedNats(Path(tmp) / "nats1").start()
            try:
                print(f"part 1: {args.devices} devices x {args.rounds} rounds, x{args.repeat}", flush=True)
                one = await part1(server, args)
            finally:
                server.stop()
            low, high = cast(tuple[float, float], one["ratio_range"])  # part1's (min, max) of the ratios
            print(f"\n| heartbeats on one subscription | msgs/s |\n|---|---:|\n"
                  f"| raw nats-py (count only) | {one['raw']:,.0f} |\n"
                  f"| drift service (decode, check, compare, update, events on change) | {one['ours']:,.0f} |\n"
                  f"| ours / raw, median of per-round ratios (range) | {one['ratio']:.2f}x ({low:.2f}-{high:.2f}) |\n"
                  f"received per run: {one['received']}; dropped by reason: {one['dropped']}; "
                  f"events: {one['events']}\n", flush=True)
        if args.fleet:
            server = await EmbeddedNats(Path(tmp) / "nats2").start()
            try:
                print(f"part 2: {args.fleet} simulated devices, interval {args.interval}s, hold {args.hold}s, "
                      f"grace {args.grace}s", flush=True)
                two = await part2(server, args)
            finally:
                server.stop()
            print(msgspec.json.format(msgspec.json.encode(two)).decode(), flush=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["main", "publish", "simulate"], default="main")
    parser.add_argument("--url", default="")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-round", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--fleet", type=int, default=100_000, help="part 2 devices (0 to skip)")
    parser.add_argument("--hold", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("--tamper-every", type=float, default=5.0)
    parser.add_argument("--tamper-until", type=float, default=0.0)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.role == "publish":
        asyncio.run(publish_role(arguments.url, arguments.devices, arguments.first_round, arguments.rounds))
    elif arguments.role == "simulate":
        asyncio.run(simulate_role(arguments.url, arguments.devices, arguments.interval, arguments.hold,
                                  arguments.tamper_every, arguments.tamper_until))
    else:
        asyncio.run(main(arguments))
