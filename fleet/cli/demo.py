"""`fleet demo`: until the full operator story exists (issue 7), the demo shows the foundation
working: embedded NATS with the durable event log, a few events appended atomically, replayed
and verified, all on this machine."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer
from rich.table import Table

from fleet.cli.common import console, run
from shared.config import load_settings
from shared.connection import connect_nats
from shared.embedded import EmbeddedNats
from shared.envelope import seal
from shared.errors import Conflict
from shared.eventlog import EventLog, Write
from shared.events.registry import DeviceAdded, SiteAdded
from shared.times import utcnow


def demo(
    keep: bool = typer.Option(False, "--keep", help="Keep the demo's data dir instead of a temp dir."),
) -> None:
    """Start an embedded NATS, create the event log, append and replay a few events."""
    run(_demo(keep))


async def _demo(keep: bool) -> None:
    data = Path(".fleet/demo") if keep else Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    say = console.print
    say("[bold]Fleetplane demo[/bold] — the event-log foundation. The full operator story "
        "(rollouts, drift, dashboard) is not built yet; this shows the log it stands on.\n")
    started = time.perf_counter()
    server = await EmbeddedNats(data / "nats").start()
    say(f"1. started an embedded nats-server (JetStream, sync_interval: always) at {server.url}")
    try:
        nc = await connect_nats(load_settings({"nats_url": server.url, "data_dir": str(data)}), "demo")
        log = EventLog(nc)
        info = await log.ensure_stream()
        config = info.config
        say(f"2. event log stream {config.name}: subjects {config.subjects}, deny_delete="
            f"{config.deny_delete}, deny_purge={config.deny_purge}, allow_atomic={config.allow_atomic}, "
            f"duplicate window {config.duplicate_window:.0f}s")

        now = utcnow()
        actor = "operator:demo"
        site = seal(SiteAdded(site_id="berlin-1", name="Berlin plant"), actor=actor, at=now)
        await log.append("fleet.evt.site.berlin-1", [site], 0)
        devices = [
            Write(f"fleet.evt.device.press-{n}",
                  [seal(DeviceAdded(device_id=f"press-{n}", site_id="berlin-1", kind="plc",
                                    labels={"tier": "edge"}), actor=actor, at=now)], 0)
            for n in range(1, 4)
        ]
        appended = await log.append_batch(devices)
        say(f"3. appended site berlin-1, then 3 devices as one atomic batch at sequences "
            f"{[a.seq for a in appended]}")

        try:
            await log.append("fleet.evt.device.press-1", [devices[0].envelopes[0]], 0)
        except Conflict as exc:
            say(f"4. a second writer with a stale view of press-1 was refused: conflict ({exc})")

        table = Table("seq", "subject", "type", "actor", "at")
        async for recorded in log.replay():
            e = recorded.envelope
            table.add_row(str(recorded.seq), recorded.subject, e.type, e.actor, e.at)
        say("5. replayed the whole log through an ordered consumer:")
        say(table)
        await nc.close()
    finally:
        server.stop()
    say(f"done in {time.perf_counter() - started:.1f}s; data in {data}")
