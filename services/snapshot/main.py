"""`fleet service snapshot`: connect, check the event log, rebuild snapshots and the site view
from it, follow site events, then answer `fleet.cmd.snapshot.*` until cancelled.

Issue 6 hook: when the rollout service appends its "rollout completed" event, subscribe here (an
ordered consumer on `fleet.evt.rollout.*` from the rebuild's end, like the site follower) and call
`Snapshots.on_rollout_completed(...)` with the event's id, so the snapshot becomes known-good for
the rollout's target exactly once."""

from __future__ import annotations

import asyncio
import contextlib

from services.snapshot.handlers import start, stop
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog


async def run(settings: Settings) -> None:
    """Serve the snapshot service until cancelled."""
    nc = await connect_nats(settings, "snapshot")
    try:
        eventlog = EventLog(nc)
        await eventlog.ensure_stream()
        snapshots, service = await start(nc, eventlog)
        try:
            await asyncio.Event().wait()
        finally:
            await stop(snapshots, service)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
