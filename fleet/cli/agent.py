"""`fleet agent` (the agent of one real device) and `fleet simulate` (many simulated devices in one
process), DESIGN §5."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from fleet.cli.common import console, run, settings, until_signalled
from shared.connection import connect_nats
from shared.times import parse_duration


def _duration(text: str, name: str) -> float:
    return parse_duration(text, field=name)


def agent(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", help="This device's id."),
    site: str = typer.Option(..., "--site", help="The site the device is registered at."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Where the effective config is written."),
    apply_cmd: str | None = typer.Option(
        None, "--apply-cmd", help="Shell command run after a new config is written (FLEET_CONFIG names it)."),
    health_cmd: str | None = typer.Option(
        None, "--health-cmd",
        help="Shell command run every interval: exit 0 ok, 1 degraded, other failed; "
             "stdout name=value lines are metrics."),
    interval: str = typer.Option("10s", "--interval", help="Heartbeat interval (e.g. 10s, 500ms)."),
    creds: str | None = typer.Option(
        None, "--creds", help="NATS credentials file of this device."),
) -> None:
    """Run the agent of one device until interrupted (the same agent as `fleet-agent`)."""
    from fleet_agent import logs
    from fleet_agent.agent import Agent, AgentOptions, parse_servers

    conf = settings(ctx)
    logs.setup(conf.log_level, instance=device)
    the_creds = creds or conf.nats_creds

    async def main() -> None:
        options = AgentOptions(device_id=device, site_id=site, state_dir=state_dir, apply_cmd=apply_cmd,
                               health_cmd=health_cmd, interval=_duration(interval, "interval"),
                               servers=tuple(parse_servers(conf.nats_url)),
                               creds=Path(the_creds) if the_creds else None,
                               tls_ca=Path(conf.nats_tls_ca) if conf.nats_tls_ca else None)
        await until_signalled(Agent(options).run())

    run(main())


def simulate(
    ctx: typer.Context,
    devices: int = typer.Option(10_000, "--devices", help="How many devices to simulate."),
    sites: int = typer.Option(50, "--sites", help="Over how many sites."),
    interval: str = typer.Option("10s", "--interval", help="Heartbeat interval."),
    apply_delay: str = typer.Option("0.5s", "--apply-delay", help="How long an apply takes."),
    fail_snapshots: str = typer.Option(
        "", "--fail-snapshots", help="Snapshot ids that come up unhealthy (comma separated)."),
    fail_sites: str = typer.Option("", "--fail-sites", help="Site ids where applies fail (comma separated)."),
    fail_apply: float = typer.Option(0.0, "--fail-apply", help="Chance that an apply fails."),
    offline: float = typer.Option(0.0, "--offline", help="Chance per interval that a device drops offline."),
    tamper: float = typer.Option(0.0, "--tamper", help="Chance per interval of a local config edit."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same behaviour."),
    prefix: str = typer.Option("sim", "--prefix", help="Prefix of the simulated device and site ids."),
    no_register: bool = typer.Option(
        False, "--no-register", help="Do not register devices: they are registered already."),
    reconnect: str = typer.Option(
        "jitter", "--reconnect",
        help="How devices retry after an outage: jitter (the agent's policy) or fixed (every 0.5 s)."),
) -> None:
    """Run many simulated device agents in this process until interrupted."""
    from services.agent.simulator import FleetSimulator, SimOptions

    conf = settings(ctx)
    from shared.lease import instance_name
    from shared.logs import setup_logging

    setup_logging(conf.log_level, "simulate", instance_name("simulate"))

    async def main() -> None:
        options = SimOptions(
            devices=devices, sites=sites, interval=_duration(interval, "interval"),
            apply_delay=_duration(apply_delay, "apply_delay"),
            fail_snapshots={s for s in fail_snapshots.split(",") if s},
            fail_sites={s for s in fail_sites.split(",") if s}, fail_apply=fail_apply,
            offline=offline, tamper=tamper, seed=seed, prefix=prefix, register=not no_register,
            reconnect=reconnect)
        nc = await connect_nats(conf, "simulator")
        sim = FleetSimulator(nc, options)
        try:
            await sim.start()
            console.print(f"simulating {devices} devices over {sites} sites, heartbeat every "
                          f"{options.interval:g}s (seed {seed}); Ctrl-C to stop")

            async def report() -> None:
                while True:
                    await asyncio.sleep(max(options.interval, 5.0))
                    s = sim.stats
                    console.print(f"heartbeats {s.heartbeats}  applies {s.applies} "
                                  f"(failed {s.failed_applies})  offline episodes {s.went_offline}  "
                                  f"tampered {s.tampered}")
            await until_signalled(report())
        finally:
            await sim.stop()
            await nc.drain()

    run(main())

