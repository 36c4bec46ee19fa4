"""`fleet service registry`: connect, check the event log, rebuild sites and devices from it,
then answer `fleet.cmd.registry.*` until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from services.registry.handlers import SERVICE, RegistryImage, start
from shared.checkpoint import Checkpoints
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog
from shared.lease import instance_name
from shared.lease_thread import ThreadLease
from shared.liveness import keep_alive, serve_vitals

CHECKPOINT_LEASE = "registry-checkpoints"


async def run(settings: Settings) -> None:
    """Serve the registry until cancelled."""
    nc = await connect_nats(settings, "registry")
    try:
        await serve_vitals(nc, SERVICE, settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        # One instance writes the checkpoints (any may load them).
        writer = ThreadLease(settings, CHECKPOINT_LEASE, instance_name(SERVICE, settings.instance))
        holding = asyncio.create_task(writer.run(), name="registry-checkpoint-lease")
        checkpoints = Checkpoints(nc, eventlog, SERVICE, RegistryImage, every=settings.checkpoint_every,
                                  may_write=lambda: writer.held)
        # The registry keeps every site and device in memory for the life of the process, and a
        # bulk import allocates them by the hundred thousand: collect the young generation less
        # often, and keep the rebuilt state out of full collections.
        gc.set_threshold(50_000, 20, 100)
        registry, service = await start(nc, eventlog, checkpoints)
        gc.freeze()
        following = asyncio.create_task(registry.follow(checkpoints), name="registry-follow")
        try:
            await keep_alive(nc, [following, holding])
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await service.stop()
            await checkpoints.close()
            writer.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
