"""Wiring of the drift service: connect, ensure the event log and the desired-state bucket,
rebuild the device view from the log, then serve heartbeats until cancelled."""

from __future__ import annotations

import asyncio

from services.drift.handlers import DriftService, policy_from
from shared.commands import CommandService
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog


async def run(settings: Settings) -> None:
    """Run the drift service until cancelled."""
    nc = await connect_nats(settings, "drift")
    service: DriftService | None = None
    commands: list[CommandService] = []
    try:
        eventlog = EventLog(nc)
        await eventlog.ensure_stream()
        service = DriftService(nc, eventlog, policy_from(settings), partition=_partition(settings.drift_partition))
        await service.start()
        commands = service.command_services()
        for command_service in commands:
            await command_service.start()
        await asyncio.Event().wait()
    finally:
        for command_service in commands:
            await command_service.stop()
        if service is not None:
            await service.stop()
        await nc.drain()


def _partition(text: str) -> tuple[int, int] | None:
    """`FLEET_DRIFT_PARTITION=k/N`: this instance watches partition k of N (see DriftService)."""
    text = text.strip()
    if not text:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise Invalid(f"FLEET_DRIFT_PARTITION={text!r}: use k/N, e.g. 0/3", field="drift_partition")
    return int(index), int(count)
