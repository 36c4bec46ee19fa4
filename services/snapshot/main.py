"""`fleet service snapshot`: connect, check the event log, rebuild snapshots and the site view
from it, follow site events, then answer `fleet.cmd.snapshot.*` until cancelled.

It also follows rollout events (services/snapshot/reactions.py): a completed rollout marks its
snapshot known-good for the rollout's target, exactly once."""

from __future__ import annotations

import asyncio
import contextlib

from services.snapshot.handlers import start, stop
from services.snapshot.reactions import follow_rollouts
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
        reactions = asyncio.create_task(follow_rollouts(snapshots, eventlog), name="snapshot-rollouts")
        try:
            await asyncio.Event().wait()
        finally:
            reactions.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reactions
            await stop(snapshots, service)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
