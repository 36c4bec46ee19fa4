"""Restarts at scale (issue 15.5): how long after kill -9 each service answers commands again,
from a checkpoint plus the log's tail, next to a full replay of its families; and the memory each
holds per device.

Setup: an embedded nats-server; a generated history of N devices (default 1,000,000; about 4.5
events per device: sites, snapshots, devices, desired states, coming online, a round of reports).
Per service (registry, rollout, drift, snapshot), run as `fleet service NAME` subprocesses:

1. start against the empty log: the resident memory of the bare process (the baseline);
2. after the history: start with no checkpoint (a full replay of the service's families), time
   from spawn to its first answer to a command; resident memory then; it writes a checkpoint;
3. `--restarts` times: append a tail of `--tail` events (the most a checkpoint can lag, with
   FLEET_CHECKPOINT_EVERY = tail), kill -9, start again, time to first answer.

Raw limits measured in the same run: a bare nats-py ordered consumer reading the whole log
(what a full replay could reach), and a bare ordered consumer reading the service's
checkpoint's bytes (the floor of a restart from it). Run: `python -m benchmarks.restart [--devices N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from benchmarks.projections import append_round, raw_rate
from benchmarks.synthetic import fleet_history
from shared.checkpoint import ensure_buckets
from shared.commands import CommandClient
from shared.embedded import EmbeddedNats
from shared.envelope import seal
from shared.errors import Unavailable
from shared.eventlog import EventLog, Write
from shared.events.observed import DeviceHealthChanged
from shared.subjects import checkpoint_bucket
from shared.times import utcnow

ROOT = Path(__file__).resolve().parents[1]
# service -> (command answered once it is up, checkpoint object name or None)
PROBES: dict[str, tuple[str, str, dict[str, Any], str | None]] = {
    "registry": ("registry", "get_site", {"site_id": "site-000"}, "registry"),
    "rollout": ("rollout", "list", {}, "rollout"),
    "drift": ("drift", "acknowledge", {"device_id": "no-such-device"}, "drift"),
    "snapshot": ("snapshot", "list", {}, None),
}


def spawn(name: str, url: str, every: int, logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEET_NATS_URL": url, "FLEET_CHECKPOINT_EVERY": str(every),
           "FLEET_HEARTBEAT_INTERVAL": "1h", "FLEET_LOG_LEVEL": "INFO", "OTEL_SDK_DISABLED": "true",
           "FLEET_INSTANCE": f"bench/{name}"}  # a slot's name, as `fleet up` gives it
    env.pop("FLEET_NATS_CREDS", None)
    with (logs / f"{name}.log").open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", "from fleet.cli import main; main()", "service", name],
                                cwd=ROOT, env=env, stdout=out, stderr=out)


async def answering(nc: NATS, name: str, started: float, proc: subprocess.Popen[bytes]) -> float:
    """Seconds from `started` until the service answers its probe command."""
    service, command, body, _ = PROBES[name]
    client = CommandClient(nc, actor="operator:bench")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see its log")
        try:
            await client.request(service, command, body, timeout=0.5)
            return time.perf_counter() - started
        except Unavailable:
            await asyncio.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(30)


def timeline(path: Path, since: float) -> str:
    """When the service's own log lines of this start came, in seconds after its spawn."""
    marks = []
    for line in path.read_text().splitlines():
        try:
            entry = msgspec.json.decode(line)
            at = datetime.strptime(entry["at"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
        except (msgspec.DecodeError, KeyError, ValueError):
            continue
        if at >= since - 0.01:
            marks.append(f"{at - since:.2f} s {entry.get('msg', '')[:90]}")
    return "\n    " + "\n    ".join(marks)


async def checkpoint_at_least(nc: NATS, name: str, mtime_after: float, timeout: float = 900.0) -> int:
    """Wait until the service's checkpoint object was written after `mtime_after`; its size."""
    store = await nc.jetstream().object_store(checkpoint_bucket(name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await store.get_info(PROBES[name][3] or name)
            if info.mtime and datetime.fromisoformat(info.mtime).timestamp() > mtime_after:
                return int(info.size or 0)
        except nats.js.errors.ObjectNotFoundError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no checkpoint of {name} within {timeout} s")


async def raw_object_get(nc: NATS, name: str) -> float:
    """A bare ordered consumer reading the checkpoint's chunks, keeping them and nothing else:
    the floor of a restart from it (nats-py's own `ObjectStore.get` is about 7x slower)."""
    store = await nc.jetstream().object_store(checkpoint_bucket(name))
    info = await store.get_info(PROBES[name][3] or name)
    chunks: list[bytes] = []
    done = asyncio.Event()

    async def keep(msg: Any) -> None:
        chunks.append(msg.data)
        if msg.metadata.num_pending == 0:
            done.set()

    started = time.perf_counter()
    sub = await nc.jetstream().subscribe(f"$O.{checkpoint_bucket(name)}.C.{info.nuid}", ordered_consumer=True,
                                         cb=keep, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await done.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed


async def append_tail(log: EventLog, devices: int, count: int, rng: random.Random) -> None:
    now = utcnow()
    chosen = rng.sample(range(devices), min(count, devices))
    writes = [Write(f"fleet.evt.observed.dev-{i:07d}",
                    [seal(DeviceHealthChanged(device_id=f"dev-{i:07d}", health=rng.choice(["ok", "degraded"]),
                                              previous="ok"), actor="service:drift", at=now)], None)
              for i in chosen]
    await append_round(log, writes, 8)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="fleet-restart-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        server = await EmbeddedNats(Path(tmp) / "nats").start()
        nc = await nats.connect(server.url)
        try:
            log = EventLog(nc)
            await log.ensure_stream()
            await ensure_buckets(nc)
            baseline: dict[str, float] = {}
            for name in args.services:
                proc = spawn(name, server.url, args.tail, logs)
                await answering(nc, name, time.perf_counter(), proc)
                baseline[name] = rss_mib(proc.pid)
                kill(proc, signal.SIGTERM)
            started = time.perf_counter()
            for writes in fleet_history(args.devices, rounds=1, start=utcnow() - timedelta(days=2),
                                        span=timedelta(days=2)):
                await append_round(log, writes, 8)
            head = await log.last_stream_seq()
            print(f"history: {head:,} events for {args.devices:,} devices in {time.perf_counter() - started:.0f} s",
                  flush=True)
            raw = await raw_rate(nc, head)
            print(f"raw nats-py ordered consumer: {raw:,.0f} events/s; the whole log in {head / raw:.1f} s",
                  flush=True)
            rows = []
            for name in args.services:
                rows.append(await measure(nc, log, server.url, name, args, logs, baseline[name], rng))
                print(rows[-1], flush=True)
        finally:
            await nc.close()
            server.stop()
    print("\n| service | full replay (s) | from checkpoint p50 / max (s) | raw object get (s) | "
          "raw / ours | checkpoint (MB) | encode pause, max (s) | memory (MiB, bare) | per device |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row["line"])


async def measure(nc: NATS, log: EventLog, url: str, name: str, args: argparse.Namespace, logs: Path,
                  bare: float, rng: random.Random) -> dict[str, Any]:
    started_wall = time.time()
    started = time.perf_counter()
    proc = spawn(name, url, args.tail, logs)
    full = await answering(nc, name, started, proc)
    rss = rss_mib(proc.pid)
    print(f"{name}: full replay answered after {full:.2f} s, {rss:.0f} MiB", flush=True)
    size = 0
    if PROBES[name][3] is not None:
        size = await checkpoint_at_least(nc, name, started_wall)
    restarts = []
    for _ in range(args.restarts):
        await append_tail(log, args.devices, args.tail, rng)
        kill(proc)
        started, started_wall = time.perf_counter(), time.time()
        proc = spawn(name, url, args.tail, logs)
        restarts.append(await answering(nc, name, started, proc))
        print(f"{name}: kill -9, answered again after {restarts[-1]:.2f} s; "
              + timeline(logs / f"{name}.log", started_wall), flush=True)
        if PROBES[name][3] is not None:  # as in steady state: the tail since the last checkpoint
            await checkpoint_at_least(nc, name, started_wall)  # is checkpointed before the next kill
    raw_get = await raw_object_get(nc, name) if PROBES[name][3] is not None else 0.0
    encodes = [float(m.group(1)) for m in re.finditer(r"encoded in ([0-9.]+) s", (logs / f"{name}.log").read_text())]
    kill(proc, signal.SIGTERM)
    p50, worst = statistics.median(restarts), max(restarts)
    per_device = (rss - bare) * 1024 * 1024 / args.devices
    ratio = f"{raw_get / p50:.2f}x" if raw_get else "-"
    pause = f"{max(encodes):.2f}" if encodes else "-"
    line = (f"| {name} | {full:.2f} | {p50:.2f} / {worst:.2f} | {raw_get:.2f} | {ratio} | "
            f"{size / 1e6:.0f} | {pause} | {rss:.0f} ({bare:.0f}) | {per_device:,.0f} B |")
    return {"name": name, "full": full, "restarts": restarts, "rss": rss, "line": line}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=25_000,
                        help="events appended before each kill (and FLEET_CHECKPOINT_EVERY)")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--services", nargs="+", default=list(PROBES))
    asyncio.run(main(parser.parse_args()))
