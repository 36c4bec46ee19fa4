"""`fleet service rollout`: connect, ensure the log, rebuild, serve until cancelled."""

from __future__ import annotations

import asyncio

from services.rollout.handlers import RolloutService
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog


async def run(settings: Settings) -> None:
    """Run the rollout service until cancelled."""
    nc = await connect_nats(settings, "rollout")
    try:
        log = EventLog(nc)
        await log.ensure_stream()
        service = RolloutService(nc, log)
        await service.start()
        try:
            await asyncio.Event().wait()
        finally:
            await service.stop()
    finally:
        await nc.close()
