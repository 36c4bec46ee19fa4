"""`fleet service registry`: connect, check the event log, rebuild sites and devices from it,
then answer `fleet.cmd.registry.*` until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from services.registry.handlers import start
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog
from shared.peers import follow_peers


async def run(settings: Settings) -> None:
    """Serve the registry until cancelled."""
    nc = await connect_nats(settings, "registry")
    try:
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        last = await eventlog.last_stream_seq()
        # The registry keeps every site and device in memory for the life of the process, and a
        # bulk import allocates them by the hundred thousand: collect the young generation less
        # often, and keep the rebuilt state out of full collections.
        gc.set_threshold(50_000, 20, 100)
        registry, service = await start(nc, eventlog)
        gc.freeze()
        # Other instances' writes (DESIGN §13: every service runs as two or more instances).
        peers = asyncio.create_task(follow_peers(eventlog, [registry.sites, registry.devices], last + 1))
        try:
            await asyncio.Event().wait()
        finally:
            peers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await peers
            await service.stop()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
