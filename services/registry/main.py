"""`fleet service registry`: connect, check the event log, rebuild sites and devices from it,
then answer `fleet.cmd.registry.*` until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from services.registry.handlers import start
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog


async def run(settings: Settings) -> None:
    """Serve the registry until cancelled."""
    nc = await connect_nats(settings, "registry")
    try:
        eventlog = EventLog(nc)
        await eventlog.ensure_stream()
        _, service = await start(nc, eventlog)
        try:
            await asyncio.Event().wait()
        finally:
            await service.stop()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
