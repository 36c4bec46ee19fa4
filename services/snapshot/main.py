"""`fleet service snapshot`: connect, check the event log, rebuild snapshots and the site view
from it, follow site events, then answer `fleet.cmd.snapshot.*` until cancelled.

It also follows rollout events (services/snapshot/reactions.py): a completed rollout marks its
snapshot known-good for the rollout's target, exactly once."""

from __future__ import annotations

import asyncio
import contextlib

from services.snapshot.handlers import start, stop
from services.snapshot.reactions import follow_rollouts
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog
from shared.liveness import keep_alive, serve_vitals
from shared.peers import follow_peers


async def run(settings: Settings) -> None:
    """Serve the snapshot service until cancelled."""
    nc = await connect_nats(settings, "snapshot")
    try:
        await serve_vitals(nc, "snapshot", settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        last = await eventlog.last_stream_seq()
        snapshots, service = await start(nc, eventlog)
        # Two instances may both react to one completed rollout: the reaction's command id is the
        # RolloutCompleted event's id, so the second finds it done (after a conflict) and appends
        # nothing. Other instances' snapshot writes are folded in by follow_peers.
        reactions = asyncio.create_task(follow_rollouts(snapshots, eventlog), name="snapshot-rollouts")
        peers = asyncio.create_task(follow_peers(eventlog, [snapshots.store], last + 1), name="snapshot-peers")
        try:
            await keep_alive(nc, [reactions, peers])
        finally:
            for task in (reactions, peers):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await stop(snapshots, service)
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
