"""A live fleet, driven as an operator drives it (issue #26): the story at N devices, and whether
the views told the truth all along.

    .venv/bin/python -m benchmarks.live_fleet [--devices 20000] [--sites 100] [--interval 60]
                                               [--hold 120] [--bake 30]

`fleet up` (the Supervisor: embedded nats-server and PostgreSQL, every part its own process) in a
temporary directory; a simulated fleet of N devices in this process (one wildcard subscription);
then, timed:

1. import: the devices registered through the registry's bulk import;
2. all online: until the summary counts N online;
3. hold (`--hold` s): the summary asked every 0.5 s (p50/p99), the most devices it counted offline
   (false offline: every simulated device is healthy and heartbeating), and whether it ever said
   the device state was stale;
4. rollout: a snapshot, then canary 1 % + waves 10,50,100 with `--bake` per wave, the default
   in-flight rule; drift and rollout are killed (-9) once the second wave has started; the time
   until each answers `$SRV.PING` again; the rollout's wall time and end state; API p50/p99
   meanwhile;
5. every part's resident memory (and per device), lease losses and duty restarts from the logs.

Raw limits measured in the same run: atomic batches of 1,000 raw messages (a hand-written
JetStream batch to the same server), the ceiling of any commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil
from nats.aio.client import Client as NATS

from benchmarks.eventlog import raw_batch
from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared.commands import CommandClient
from shared.config import load_settings

TERMINAL = ("completed", "aborted", "rolled_back")


@dataclass
class Run:
    """What one run measured."""

    devices: int
    figures: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: str) -> None:
        self.figures[name] = value
        print(f"{time.strftime('%H:%M:%S')} {name}: {value}", file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Api:
    """The query API over HTTP, as the dashboard reads it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return msgspec.json.decode(response.read())

    async def summary(self) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        answer = await asyncio.to_thread(self._get, "/v1/summary")
        return time.perf_counter() - started, answer


async def _sample(api: Api, stop: asyncio.Event, latencies: list[float], worst: dict[str, Any]) -> None:
    """Ask the summary every 0.5 s until `stop`: latencies, the most offline, any stale picture."""
    while not stop.is_set():
        try:
            took, answer = await api.summary()
        except OSError:
            await asyncio.sleep(0.5)
            continue
        latencies.append(took)
        worst["offline"] = max(worst.get("offline", 0), answer["totals"]["offline"])
        if (answer.get("device_state") or {}).get("stale"):
            worst["stale"] = worst.get("stale", 0) + 1
        await asyncio.sleep(0.5)


async def _answers_again(client: CommandClient, service: str, since: float) -> float:
    while True:
        try:
            await client.nc.request(f"$SRV.PING.fleet-{service}", b"", timeout=0.5)
            return time.monotonic() - since
        except Exception:
            await asyncio.sleep(0.1)


def _kill(supervisor: Supervisor, part: str) -> None:
    proc = supervisor.parts[part].proc
    assert proc is not None
    assert proc.returncode is None
    os.kill(proc.pid, signal.SIGKILL)


async def raw_batches(nc: NATS, batches: int = 20) -> float:
    """Messages per second in hand-written atomic batches of 1,000 (the same server, same run)."""
    payloads = [b'{"type":"DeviceRelabeled","v":1,"data":{}}'] * 1000
    seconds = 0.0
    for _ in range(batches):
        seconds += await raw_batch(nc, payloads, with_ids=True)
    return batches * 1000 / seconds


async def run(workdir: Path, args: argparse.Namespace) -> Run:
    out = Run(args.devices)
    settings = load_settings({"data_dir": str(workdir / "fleet"), "heartbeat_interval": args.interval}, env={})
    supervisor = Supervisor(settings)
    try:
        status = await supervisor.start()
        nc = await nats.connect(status.nats_url, user_credentials=supervisor.admin_creds,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        client = CommandClient(nc, actor="operator:bench", timeout=60.0)
        await client.wait_ready("registry", "snapshot", "rollout", "drift", timeout=180)
        assert supervisor.token_file is not None
        api = Api(status.api_url, supervisor.token_file.read_text().strip())
        sim = FleetSimulator(nc, SimOptions(devices=args.devices, sites=args.sites, interval=args.interval,
                                            apply_delay=0.5, prefix="live", register=False))
        began = time.monotonic()
        await sim.register()
        out.put("import", f"{time.monotonic() - began:.1f} s")
        began = time.monotonic()
        await sim.start()
        while True:
            try:
                _, answer = await api.summary()
                if answer["totals"]["online"] >= args.devices:
                    break
            except OSError:
                pass
            await asyncio.sleep(1)
        out.put("all online", f"{time.monotonic() - began:.1f} s ({args.interval:g} s interval)")

        hold: list[float] = []
        worst: dict[str, Any] = {}
        stop = asyncio.Event()
        sampling = asyncio.create_task(_sample(api, stop, hold, worst))
        await asyncio.sleep(args.hold)
        stop.set()
        await sampling
        out.put("hold", f"{args.hold:g} s: summary p50 {_pct(hold, .5) * 1000:.1f} ms, p99 "
                        f"{_pct(hold, .99) * 1000:.1f} ms over {len(hold)} asks; most offline "
                        f"{worst.get('offline', 0)}; stale answers {worst.get('stale', 0)}")

        snap = (await client.send("snapshot", "create", {"name": "live", "config": {"v": 2}})).result
        rollout: list[float] = []
        worst = {}
        stop = asyncio.Event()
        sampling = asyncio.create_task(_sample(api, stop, rollout, worst))
        began = time.monotonic()
        await client.send("rollout", "start", {
            "rollout_id": "r-live", "snapshot_id": snap["snapshot_id"], "target": "", "canary": "1%",
            "waves": "10,50,100", "bake": f"{args.bake}s", "apply_timeout": f"{max(5 * args.interval, 60)}s"})
        killed = False
        while True:
            state = (await client.send("rollout", "get", {"rollout_id": "r-live"})).result
            if not killed and state["wave"] >= 2:
                killed = True
                moment = time.monotonic()
                _kill(supervisor, "drift")
                _kill(supervisor, "rollout")
                drift_back, rollout_back = await asyncio.gather(_answers_again(client, "drift", moment),
                                                                _answers_again(client, "rollout", moment))
                out.put("kill -9 mid-wave", f"drift answers again in {drift_back:.1f} s, rollout in {rollout_back:.1f} s")
            if state["status"] in (*TERMINAL, "paused"):
                break
            await asyncio.sleep(1)
        stop.set()
        await sampling
        out.put("rollout", f"{state['status']} in {time.monotonic() - began:.0f} s ({state['assigned']} of "
                           f"{state['devices']} assigned); summary p50 {_pct(rollout, .5) * 1000:.1f} ms, p99 "
                           f"{_pct(rollout, .99) * 1000:.1f} ms; most offline {worst.get('offline', 0)}; "
                           f"stale answers {worst.get('stale', 0)}")

        rss = {name: psutil.Process(part.proc.pid).memory_info().rss / 2**20
               for name, part in supervisor.parts.items() if part.proc is not None and part.proc.returncode is None}
        total = sum(rss.values())
        out.put("memory", f"{total:.0f} MiB for the parts ({total * 2**20 / args.devices / 1024:.1f} KiB per device): "
                          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())))
        lost = sum(len(re.findall(r"lease \S+: lost by", p.read_text(errors="replace")))
                   for p in (supervisor.log_dir).glob("*.log"))
        restarts = {n: p.status.restarts for n, p in supervisor.parts.items() if p.status.restarts}
        duty = {n: p.status.restarted_for for n, p in supervisor.parts.items() if p.status.restarted_for}
        out.put("leases lost / restarts", f"{lost} / {restarts or 'none'} (for duties: {duty or 'none'})")
        # the rollout's largest commit, from its own log line ("N events (...) decided in a s, committed in b s")
        commits = [(int(n), float(c)) for n, c in re.findall(
            r"(\d+) events \(\w+\) decided in [\d.]+s, committed in ([\d.]+)s",
            (supervisor.log_dir / "rollout.log").read_text(errors="replace"))]
        events, seconds = max(commits, default=(0, 0.0))
        ours = events / seconds if seconds else float("nan")
        raw = await raw_batches(nc)
        out.put("commit rate", f"largest rollout commit {events:,} events at {ours:,.0f}/s (events and their KV "
                               f"values) against raw atomic batches of 1,000 at {raw:,.0f} msgs/s: ratio "
                               f"{ours / raw:.2f}")
        await sim.stop()
        await nc.close()
    finally:
        await supervisor.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--hold", type=float, default=120.0)
    parser.add_argument("--bake", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-live-") as tmp:
        result = asyncio.run(run(Path(tmp), args))
    print(f"\nLive fleet, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.devices:,} devices over {args.sites} sites, "
          f"{args.interval:g} s interval\n")
    print("| step | measured |\n|---|---|")
    for name, value in result.figures.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
