"""Fault injection (issue 15): a live fleet under kill -9, frozen processes and restarts; then,
from the log, nothing lost and nothing duplicated.

    .venv/bin/python -m benchmarks.chaos [--minutes 10] [--devices 3000] [--sites 30] [--seed N]

`fleet up` (the Supervisor: embedded nats-server and PostgreSQL in JWT mode, every part its own
process) runs on loopback in a temporary directory, with a simulated fleet and an operator client
that keeps sending commands — sites added, snapshots created, rollouts started over the whole
fleet and followed to their end — recording the command id of every command it saw acknowledged
(a command that times out is sent again with the same id, as a client does). Meanwhile, one fault
after another, in a shuffled round of every kind: kill -9 of a part, of nats-server, of
PostgreSQL; SIGSTOP of a part for 2-6 s then SIGCONT (a frozen process); SIGTERM of a part (a
restart). After each fault the run waits until the system has recovered — every server and part
running, every service answering its `$SRV.PING`, a command acknowledged, the API ready — and
records how long that took from the kill (from the SIGCONT for a freeze).

At the end, with the faults over, it checks from the log: every acknowledged command's event is
present exactly once; no device was assigned twice by one rollout; every rollout ended or stands
paused; every simulated device is registered once; the read models equal a fresh rebuild. It
prints a table of faults by kind with recovery p50/max, and the counts. Exit 0 when every check
holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared.commands import CommandClient
from shared.config import load_settings
from shared.errors import FleetError
from shared.eventlog import EventLog

KINDS = ("kill -9 part", "kill -9 nats-server", "kill -9 postgres", "freeze part", "restart part")
PARTS = ("audit", "registry", "snapshot", "drift", "rollout", "projections", "api")
SERVICES = ("registry", "snapshot", "rollout", "drift")
TERMINAL = ("completed", "aborted", "rolled_back")
RECOVERY_LIMIT = 180.0  # seconds a fault may take to heal before the run counts it as not recovered


@dataclass
class Outcome:
    """What a run injected and what it found in the log."""

    faults: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    not_recovered: list[str] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # command id -> the event type it must have written
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    assigned_twice: list[str] = field(default_factory=list)
    rollouts: dict[str, str] = field(default_factory=dict)  # rollout id -> its status at the end
    devices_registered: int = 0
    devices: int = 0
    models_differ: list[str] | None = None  # read-model tables unlike a fresh rebuild (None: not compared)
    seconds: float = 0.0

    @property
    def unsettled(self) -> list[str]:
        return [r for r, status in self.rollouts.items() if status not in (*TERMINAL, "paused")]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.assigned_twice or self.not_recovered or self.unsettled) \
            and self.devices_registered == self.devices and self.models_differ == []

    def table(self) -> str:
        lines = ["| fault | injected | recovered in p50 | max |", "|---|---:|---:|---:|"]
        for kind in KINDS:
            times = self.recovery.get(kind, [])
            p50 = f"{statistics.median(times):.1f} s" if times else "-"
            top = f"{max(times):.1f} s" if times else "-"
            lines.append(f"| {kind} | {self.faults[kind]} | {p50} | {top} |")
        ended = Counter(self.rollouts.values())
        lines += [
            "",
            "| check | result |",
            "|---|---|",
            f"| faults injected / not recovered within {RECOVERY_LIMIT:.0f} s | {sum(self.faults.values())} / "
            f"{len(self.not_recovered)} |",
            f"| commands acknowledged | {len(self.acked)} |",
            f"| lost (acknowledged, no event) | {len(self.lost)} |",
            f"| duplicated (acknowledged, event twice) | {len(self.duplicated)} |",
            f"| devices assigned twice by one rollout | {len(self.assigned_twice)} |",
            f"| rollouts by end status | {', '.join(f'{k} {v}' for k, v in sorted(ended.items())) or '-'} |",
            f"| simulated devices registered once | {self.devices_registered} / {self.devices} |",
            f"| read models equal a fresh rebuild | {'yes' if self.models_differ == [] else f'NO: {self.models_differ}'} |",
        ]
        return "\n".join(lines)


class Operator:
    """A client that sends commands and records the ids of those it saw acknowledged."""

    def __init__(self, client: CommandClient, outcome: Outcome) -> None:
        self.client = client
        self.outcome = outcome
        self.n = 0
        self.rollouts: list[str] = []

    async def send(self, service: str, command: str, body: dict[str, Any], writes: str | None,
                   timeout: float = 120.0) -> dict[str, Any] | None:
        """Send until acknowledged (the same command id each time); None when refused."""
        self.n += 1
        command_id = f"chaos-{self.n}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = await self.client.send(service, command, {"command_id": command_id, **body}, timeout=5.0)
            except FleetError as exc:
                if exc.code != "unavailable":
                    return None  # refused (e.g. a conflict): acknowledged as refused, writes nothing
            except (nats.errors.Error, OSError):
                pass  # disconnected for a moment: send again
            else:
                if writes is not None:
                    self.outcome.acked[command_id] = writes
                result: dict[str, Any] = reply.result
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service}.{command} not acknowledged within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def add_sites(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.send("registry", "add_site", {"site_id": f"chaos-{self.n + 1}"}, "SiteAdded")
            await asyncio.sleep(0.3)

    async def roll(self, stop: asyncio.Event) -> None:
        """One rollout over the whole fleet after another, each followed to its end."""
        k = 0
        while not stop.is_set():
            k += 1
            snap = await self.send("snapshot", "create", {"name": "chaos", "config": {"v": k}}, "SnapshotCreated")
            assert snap is not None
            rollout_id = f"r-chaos-{k}"
            started = await self.send("rollout", "start", {
                "rollout_id": rollout_id, "snapshot_id": snap["snapshot_id"], "target": "", "canary": {"percent": 2.0},
                "waves": [25, 50, 100], "bake_seconds": 1, "max_in_flight": 1000, "min_healthy": 0.5,
                "max_offline": 0.5}, "RolloutStarted")
            if started is None:
                continue
            self.rollouts.append(rollout_id)
            await self.follow(rollout_id, stop)

    async def follow(self, rollout_id: str, stop: asyncio.Event, patience: float = 240.0) -> None:
        """Until the rollout ends; a paused one (a gate hit while faults raged) is resumed once
        the run is over, or aborted when it will not move."""
        deadline = time.monotonic() + patience
        while True:
            state = await self.send("rollout", "get", {"rollout_id": rollout_id}, None)
            status = state["status"] if state else "?"
            if status in TERMINAL:
                return
            if status == "paused" and (stop.is_set() or time.monotonic() > deadline):
                await self.send("rollout", "abort", {"rollout_id": rollout_id, "reason": "chaos run over"},
                                "RolloutAborted")
                return
            if status == "paused":
                await self.send("rollout", "resume", {"rollout_id": rollout_id}, "RolloutResumed")
            await asyncio.sleep(0.5)


async def _ready(api_url: str) -> bool:
    def ask() -> bool:
        try:
            with urllib.request.urlopen(f"{api_url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, ValueError):
            return False

    return await asyncio.to_thread(ask)


async def _healthy(supervisor: Supervisor, nc: NATS, operator: Operator) -> bool:
    """Every server and part running, every service answering, a command acknowledged, the API ready."""
    up = supervisor.status
    assert up is not None
    if any(s.status.state != "running" for s in supervisor.servers):
        return False
    if any(p.status.state != "running" or p.proc is None or p.proc.returncode is not None
           for p in supervisor.parts.values()):
        return False
    for service in SERVICES:
        try:
            await nc.request(f"$SRV.PING.fleet-{service}", b"", timeout=1.0)
        except (nats.errors.Error, OSError):
            return False
    try:
        await operator.send("registry", "add_site", {"site_id": f"probe-{operator.n + 1}"}, "SiteAdded", timeout=5)
    except TimeoutError:
        return False
    return await _ready(up.api_url)


def _pid(supervisor: Supervisor, name: str) -> int | None:
    if name in ("nats", "postgres"):
        server = next(s for s in supervisor.servers if s.status.name == name)
        proc = server.runs.proc
        return proc.pid if proc is not None and proc.poll() is None else None
    part = supervisor.parts[name].proc
    return part.pid if part is not None and part.returncode is None else None


async def _inject(kind: str, supervisor: Supervisor, rng: random.Random, say: Callable[[str], None]) -> float:
    """Inject one fault; returns the moment recovery is counted from (monotonic): the kill or the
    SIGTERM, or the SIGCONT that ends a freeze."""
    target = {"kill -9 nats-server": "nats", "kill -9 postgres": "postgres"}.get(kind) or rng.choice(PARTS)
    pid = _pid(supervisor, target)
    while pid is None:  # between a restart and its process: wait for it
        await asyncio.sleep(0.1)
        pid = _pid(supervisor, target)
    if kind == "freeze part":
        frozen = rng.uniform(2, 6)
        os.kill(pid, signal.SIGSTOP)
        say(f"{kind}: {target} (pid {pid}) for {frozen:.1f} s")
        await asyncio.sleep(frozen)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        return time.monotonic()  # recovery counts from the thaw
    began = time.monotonic()
    os.kill(pid, signal.SIGTERM if kind == "restart part" else signal.SIGKILL)
    say(f"{kind}: {target} (pid {pid})")
    # until `fleet up` has seen it go (a graceful stop takes a moment)
    while _pid(supervisor, target) == pid and time.monotonic() - began < RECOVERY_LIMIT:  # noqa: ASYNC110 - polling other processes
        await asyncio.sleep(0.05)
    return began


async def _quiet(exc: Exception) -> None:  # reconnect attempts while nats-server is down are the point here
    pass


async def _check_log(nc: NATS, outcome: Outcome, sim_prefix: str) -> None:
    written: Counter[tuple[str, str]] = Counter()  # (command id, type)
    assigned: Counter[tuple[str, str]] = Counter()  # (rollout, device)
    added: Counter[str] = Counter()
    async for record in EventLog(nc).replay():
        envelope = record.envelope
        if envelope.causation_id in outcome.acked:
            written[(envelope.causation_id, envelope.type)] += 1
        if envelope.type == "DesiredStateAssigned" and getattr(record.event, "reason", "") == "rollout":
            assigned[(str(getattr(record.event, "rollout_id", "")), envelope.aggregate_id)] += 1
        if envelope.type == "DeviceAdded" and envelope.aggregate_id.startswith(sim_prefix):
            added[envelope.aggregate_id] += 1
    for command_id, writes in outcome.acked.items():
        count = written[(command_id, writes)]
        if count == 0:
            outcome.lost.append(command_id)
        elif count > 1:
            outcome.duplicated.append(command_id)
    outcome.assigned_twice = [f"{r}/{d}" for (r, d), n in assigned.items() if n > 1]
    outcome.devices_registered = sum(1 for n in added.values() if n == 1)


async def run(workdir: Path, *, seconds: float, devices: int, sites: int, seed: int,
              say: Callable[[str], None] = print) -> Outcome:
    """One fault-injection run of `seconds` of faults; returns what it found."""
    from tests.integration.test_projections import differ_from_rebuild

    rng = random.Random(seed)
    outcome = Outcome(devices=devices)
    settings = load_settings({"data_dir": str(workdir / "fleet"), "heartbeat_interval": 1.0, "offline_after": 10,
                              "drift_grace": 10.0, "reconcile_backoff": 1.0}, env={})
    supervisor = Supervisor(settings)
    began = time.monotonic()
    try:
        status = await supervisor.start()
        nc = await nats.connect(status.nats_url, user_credentials=supervisor.admin_creds,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_quiet)
        client = CommandClient(nc, actor="operator:chaos", timeout=5.0)
        operator = Operator(client, outcome)
        sim = FleetSimulator(nc, SimOptions(devices=devices, sites=sites, interval=1.0, apply_delay=0.2,
                                            seed=seed, prefix="chaos"))
        stop = asyncio.Event()
        try:
            await client.wait_ready(*SERVICES, timeout=120)
            await sim.start()
            say(f"fleet up: {devices} simulated devices over {sites} sites; faults for {seconds:.0f} s")
            streams = [asyncio.create_task(operator.add_sites(stop)), asyncio.create_task(operator.roll(stop))]
            end = time.monotonic() + seconds
            kinds: list[str] = []
            while time.monotonic() < end:
                if not kinds:
                    kinds = list(KINDS)
                    rng.shuffle(kinds)
                kind = kinds.pop()
                started = await _inject(kind, supervisor, rng, say)
                outcome.faults[kind] += 1
                while not await _healthy(supervisor, nc, operator):
                    if time.monotonic() - started > RECOVERY_LIMIT:
                        outcome.not_recovered.append(kind)
                        break
                    await asyncio.sleep(0.2)
                else:
                    outcome.recovery[kind].append(time.monotonic() - started)
                    say(f"  recovered in {outcome.recovery[kind][-1]:.1f} s")
                await asyncio.sleep(rng.uniform(1, 4))
            say("faults over: letting the rollouts end")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*streams), 600)
            for rollout_id in operator.rollouts:
                state = await operator.send("rollout", "get", {"rollout_id": rollout_id}, None)
                outcome.rollouts[rollout_id] = state["status"] if state else "?"
        finally:
            stop.set()
            await sim.stop()
        await _check_log(nc, outcome, "chaos")
        owner = supervisor.part_env["projections"]
        outcome.models_differ = await differ_from_rebuild(owner["FLEET_DATABASE_URL"], owner["PGPASSFILE"],
                                                          EventLog(nc))
        await nc.close()
    finally:
        await supervisor.stop()
    outcome.seconds = time.monotonic() - began
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected")
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="fleet-chaos-") as tmp:
        outcome = asyncio.run(run(Path(tmp), seconds=args.minutes * 60, devices=args.devices, sites=args.sites,
                                  seed=args.seed, say=say))
    print(f"\nChaos run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.minutes:g} min of faults, {args.devices} devices, "
          f"seed {args.seed}, {outcome.seconds:.0f} s in all\n")
    print(outcome.table())
    for name in ("lost", "duplicated", "assigned_twice", "not_recovered", "unsettled", "models_differ"):
        if getattr(outcome, name):
            print(f"{name}: {getattr(outcome, name)[:10]}")
    sys.exit(0 if outcome.ok else 1)


if __name__ == "__main__":
    main()
