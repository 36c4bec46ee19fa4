"""The `make demo` story: an operator's afternoon with Fleetplane, narrated with real answers.

It runs `fleet up` (embedded NATS and PostgreSQL, every service as its own process), simulates a
fleet, then drives it with the same `fleet` commands an operator would type, printing each
command and its real output: register the fleet, roll v1 everywhere, roll v2 behind a canary
site, waves and gates, roll v3 which is unhealthy at the canary site (the gate fails and the
fleet rolls back by itself), tamper with a few devices (drift is found and reconciled), then ask
what runs where, what changed, what is degraded, and what ran where before v3."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.rule import Rule

from fleet.supervisor import Supervisor
from services.agent.simulator import FleetSimulator, SimOptions
from shared.config import Settings
from shared.configs import snapshot_id
from shared.connection import connect_nats
from shared.times import format_time, utcnow

FAST = {"heartbeat_interval": 1.0, "offline_after": 3, "drift_grace": 2.0, "reconcile_backoff": 1.0}
CONFIGS: dict[str, dict[str, Any]] = {
    "v1": {"app": {"image": "registry.local/press-ctl:1.0", "workers": 2}, "telemetry": {"interval_s": 30}},
    "v2": {"app": {"image": "registry.local/press-ctl:1.1", "workers": 4}, "telemetry": {"interval_s": 10}},
    "v3": {"app": {"image": "registry.local/press-ctl:2.0-rc1", "workers": 8}, "telemetry": {"interval_s": 5}},
}
V2_OVERRIDE = {"app": {"workers": 2}}  # the small plant at site 003 keeps fewer workers


class Demo:
    """One run of the story."""

    def __init__(self, settings: Settings, devices: int, sites: int, console: Console) -> None:
        self.settings = settings
        self.devices = devices
        self.sites = sites
        self.console = console
        self.env: dict[str, str] = {}
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        """Narrate one step."""
        self.console.print(f"[bold cyan]»[/bold cyan] {text}", highlight=False)

    def chapter(self, title: str) -> None:
        """Start a chapter of the story."""
        self.console.print(Rule(f"[bold]{title}[/bold] [dim]({time.monotonic() - self.started:.0f}s)[/dim]"))

    async def fleet(self, *args: str, quiet: bool = False, check: bool = True) -> tuple[int, str]:
        """Run a `fleet` command as an operator would, showing it and its output."""
        if not quiet:
            self.console.print(f"[dim]$[/dim] [bold]fleet {' '.join(_quote(a) for a in args)}[/bold]",
                               highlight=False)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet", *args, env={**self.env, "COLUMNS": os.environ.get("COLUMNS", "110")},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        text = out.decode()
        if not quiet:
            self.console.out(text.rstrip("\n"), highlight=False)
        if check and proc.returncode not in (0,):
            raise RuntimeError(f"`fleet {' '.join(args)}` exited with {proc.returncode}:\n{text}")
        return proc.returncode or 0, text

    async def fleet_json(self, *args: str) -> Any:
        """Run a `fleet` command with --json and return its answer (not shown)."""
        _, text = await self.fleet(*args, "--json", quiet=True)
        return json.loads(text)

    async def wait_rollout(self, rollout_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        """Poll until the rollout reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            result: dict[str, Any] = (await self.fleet_json("rollout", "status", rollout_id))["result"]
            if result["status"] in statuses:
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollout {rollout_id} did not finish: {result}")
            await asyncio.sleep(0.5)

    async def run(self, keep_running: bool) -> int:
        """Tell the story; return 0 when every step showed what it should."""
        data = self.settings.data_path.resolve()
        self.chapter("Starting Fleetplane")
        self.say(f"`fleet up` in {data}: embedded NATS (JetStream, fsync on every write) and PostgreSQL, "
                 "the registry, snapshot, drift and rollout services, the projection runner and the API — "
                 "each its own process, supervised.")
        supervisor = Supervisor(msgspec.structs.replace(self.settings, **FAST))
        status = await supervisor.start()
        self.env = {**os.environ, "FLEET_DATA_DIR": str(data), "FLEET_NATS_URL": status.nats_url,
                    "FLEET_API_URL": status.api_url}
        self.env.pop("FLEET_DATABASE_URL", None)
        sim_settings = msgspec.structs.replace(self.settings, nats_url=status.nats_url)
        if supervisor.authority is not None:  # embedded NATS: the demo's own identities
            secrets = supervisor.authority.directory
            issue, write = supervisor.authority.issue, supervisor.authority.write_creds
            # commands under an operator called `demo` (the actor the story filters on)
            self.env["FLEET_COMMAND_CREDS"] = str(write(secrets / "demo-operator.creds", issue("operator", "demo")))
            # the simulator speaks for many devices: the test-only simulator role
            sim_creds = write(secrets / "simulator.creds", issue("simulator", "demo"))
            sim_settings = msgspec.structs.replace(sim_settings, nats_creds=str(sim_creds))
        nc = await connect_nats(sim_settings, "demo")
        sim = FleetSimulator(nc, SimOptions(devices=self.devices, sites=self.sites, interval=FAST["heartbeat_interval"],
                                            apply_delay=0.3, seed=42, prefix="plant"))
        try:
            await self._wait_ready()
            self.say(f"Everything is up; the API and dashboard are at {status.api_url}")
            try:
                ok = await self._story(sim, status.api_url)
            except RuntimeError as exc:
                self.console.print(f"[red]the demo stopped: {exc}[/red]")
                ok = False
            self.chapter("Done" if ok else "Done, with surprises (see above)")
            self.say(f"The dashboard is at [bold]{status.api_url}/[/bold] — the fleet keeps running there. "
                     f"Sign in with the admin API token `fleet up` left in {supervisor.token_file} "
                     "(or make one: `fleet token create --role viewer --name YOU`).")
            if keep_running:
                self.say("Press Ctrl-C to stop everything.")
                supervisor_task = asyncio.create_task(supervisor.run_until_stopped())
                await supervisor_task
            return 0 if ok else 1
        finally:
            await sim.stop()
            await nc.close()
            await supervisor.stop()

    async def _wait_ready(self) -> None:
        """Poll until each service answers a harmless query."""
        deadline = time.monotonic() + 90
        for probe in (("site", "list"), ("snapshot", "list"), ("rollout", "list"), ("where",)):
            while (await self.fleet(*probe, quiet=True, check=False))[0] != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`fleet {' '.join(probe)}` never answered; see the logs in the data dir")
                await asyncio.sleep(0.3)

    async def _story(self, sim: FleetSimulator, api_url: str) -> bool:
        ok = True
        data = self.settings.data_path.resolve()
        ids = {name: snapshot_id("press-ctl", config, {"press-ctl": name},
                                 {"plant-s003": V2_OVERRIDE} if name == "v2" else {})
               for name, config in CONFIGS.items()}

        self.chapter("1. Register the fleet")
        self.say(f"{self.devices} devices at {self.sites} plants register through the registry service "
                 "(in atomic batches), then start heartbeating.")
        await sim.start()
        await self.fleet("site", "list")
        await self.fleet("device", "list", "--site", "plant-s000")

        self.chapter("2. Snapshots: immutable, versioned configuration")
        for name, config in CONFIGS.items():
            path = data / f"{name}.json"
            path.write_text(json.dumps(config, indent=2))
            args = ["snapshot", "create", "press-ctl", "--config", str(path), "--artifact", f"press-ctl={name}"]
            if name == "v2":
                override = data / "v2-plant-s003.json"
                override.write_text(json.dumps(V2_OVERRIDE))
                args += ["--override", f"plant-s003={override}"]
            await self.fleet(*args)
        await self.fleet("snapshot", "diff", ids["v1"], ids["v2"])

        self.chapter("3. Roll v1 out everywhere")
        await self.fleet("rollout", "start", ids["v1"], "--id", "r-v1", "--waves", "100",
                         "--max-in-flight", str(self.devices))
        v1 = await self.wait_rollout("r-v1", ("completed", "paused", "rolled_back"))
        await self.fleet("rollout", "status", "r-v1")
        ok &= bool(v1["status"] == "completed")

        before_v2 = format_time(utcnow())
        self.chapter("4. Roll v2 out: a canary plant, then waves, behind health and telemetry gates")
        await self.fleet("rollout", "start", ids["v2"], "--id", "r-v2", "--canary", "site:plant-s001",
                         "--waves", "25,100", "--max-in-flight", "500", "--min-healthy", "95%",
                         "--max-failed", "2%", "--metric", "error_rate p95<=0.02")
        v2 = await self.wait_rollout("r-v2", ("completed", "paused", "rolled_back"))
        await self.fleet("rollout", "status", "r-v2")
        ok &= bool(v2["status"] == "completed")
        before_v3 = format_time(utcnow())
        await asyncio.sleep(1.0)

        self.chapter("5. Roll v3 out — it is unhealthy, and the canary plant shows it")
        self.say("v3 comes up failing on every device that gets it; the policy is to roll back on a failed gate.")
        sim.options.fail_snapshots = {ids["v3"]}
        await self.fleet("rollout", "start", ids["v3"], "--id", "r-v3", "--canary", "site:plant-s002",
                         "--waves", "50,100", "--on-failure", "rollback", "--min-healthy", "95%",
                         "--metric", "error_rate p95<=0.02")
        v3 = await self.wait_rollout("r-v3", ("rolled_back", "completed", "paused"))
        self.say("The gate failed on the canary wave with the inputs below, and every touched device got "
                 "v2 back — no other plant ever saw v3:")
        await self.fleet("rollout", "status", "r-v3")
        ok &= bool(v3["status"] == "rolled_back" and not v3["last_gate"]["passed"])
        for _ in range(60):  # the canary plant's devices apply v2 again
            if all(s == ids["v2"] for s in sim.snapshot):
                break
            await asyncio.sleep(0.25)
        ok &= all(s == ids["v2"] for s in sim.snapshot)

        self.chapter("6. Drift: someone edits the config on three devices by hand")
        tampered = [7, 8, 9]
        for i in tampered:
            sim.tamper_with(i)
        names = [sim.ids[i] for i in tampered]
        self.say(f"Tampered with {', '.join(names)}; the drift service sees their reported config hash differ "
                 "from desired, waits out the grace period, marks them drifted and re-puts their desired state.")
        repaired = await self._wait(lambda: all(n in sim.stats.repaired_at for n in names), 30)
        ok &= repaired
        await asyncio.sleep(2 * FAST["heartbeat_interval"])
        await self.fleet("history", names[0], "--limit", "6")

        self.chapter("7. What is running where, what changed, what is degraded — and what ran before v3")
        await self.fleet("where")
        await self.fleet("changes", "--since", "10m", "--actor", "operator:demo", "--limit", "12")
        await self.fleet("degraded")
        await self.fleet("sites")
        self.say(f"And the fleet as it stood at {before_v3}, just before v3 (replayed from the log):")
        await self.fleet("where", "--at", before_v3)
        self.say("What changed between just before v2 and just before v3, fleet-wide, and which devices "
                 "are behind each number:")
        await self.fleet("diff", "--from", before_v2, "--to", before_v3, "--devices", "--limit", "3")
        self.say("The audit trail is the log itself: `fleet audit export` writes it as JSON lines.")
        exported = data / "audit.jsonl"
        await self.fleet("audit", "export", "--out", str(exported))
        self.say("And it proves itself intact: the audit service signs the log's hash chain every 1,000 events "
                 "and at shutdown; `fleet audit verify` re-hashes the log and checks every signature "
                 "(docs/audit.md), online or on the export, offline.")
        await self.fleet("audit", "verify")
        await self.fleet("audit", "verify", "--file", str(exported))
        return ok

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.2)
        return False


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " ()<>=,;") and not arg.startswith("--") else arg


def default_data_dir() -> Path:
    """Where the demo keeps its data unless told otherwise."""
    return Path(".fleet") / "demo"
