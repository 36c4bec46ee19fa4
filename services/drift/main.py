"""Wiring of the drift service: connect, ensure the event log and the desired-state bucket,
rebuild the device view from the log, then serve heartbeats until cancelled."""

from __future__ import annotations

import asyncio

from services.drift.handlers import DriftService, policy_from
from shared.commands import CommandService
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog


async def run(settings: Settings) -> None:
    """Run the drift service until cancelled."""
    nc = await connect_nats(settings, "drift")
    service: DriftService | None = None
    commands = CommandService(nc, "drift")
    try:
        eventlog = EventLog(nc)
        await eventlog.ensure_stream()
        service = DriftService(nc, eventlog, policy_from(settings))
        await service.start()
        service.register(commands)
        await commands.start()
        await asyncio.Event().wait()
    finally:
        await commands.stop()
        if service is not None:
            await service.stop()
        await nc.drain()
