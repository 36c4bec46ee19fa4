"""Wiring of the drift service: connect, ensure the event log and the desired-state bucket,
rebuild the device view from the log, then serve heartbeats until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS

from services.drift.handlers import DriftImage, DriftService, policy_from
from shared.checkpoint import Checkpoints
from shared.cluster import ensure_log, replicas_for
from shared.commands import CommandService
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog
from shared.lease import Lease, instance_name, lease_bucket, run_while_held


async def run(settings: Settings) -> None:
    """Run the drift service until cancelled.

    Several instances may run with the same partition (or none): the holder of the partition's
    lease (`drift.<k>-of-<N>`, or `drift`) serves it, the others stand by and take over when it
    dies, rebuilding from the log (docs/decisions.md, "Drift with two or more instances")."""
    nc = await connect_nats(settings, "drift")
    try:
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        partition = _partition(settings.drift_partition)
        kv, ttl = await lease_bucket(nc, settings.lease_ttl, replicas_for(settings, nc))
        lease = Lease(kv, lease_name(partition), instance_name("drift", settings.instance), ttl=ttl)
        holding = asyncio.create_task(lease.run(), name="drift-lease")
        try:
            await run_while_held(lease, lambda: _serve(nc, eventlog, settings, partition))
        finally:
            lease.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
    finally:
        await nc.drain()


def lease_name(partition: tuple[int, int] | None) -> str:
    """The lease of one partition (or of the whole fleet when drift is not partitioned); a token
    under `drift.` so that the role table can give drift every partition's key and nothing else."""
    return "drift" if partition is None else f"drift.{partition[0]}-of-{partition[1]}"


def checkpoint_name(partition: tuple[int, int] | None) -> str:
    """The name of a partition's checkpoints (as before leases had their own token)."""
    return "drift" if partition is None else f"drift-{partition[0]}-of-{partition[1]}"


async def _serve(nc: NATS, eventlog: EventLog, settings: Settings, partition: tuple[int, int] | None) -> None:
    service: DriftService | None = None
    commands: list[CommandService] = []
    try:
        checkpoints = Checkpoints(nc, eventlog, "drift", DriftImage, name=checkpoint_name(partition),
                                  every=settings.checkpoint_every)
        service = DriftService(nc, eventlog, policy_from(settings), partition=partition,
                               checkpoints=checkpoints)
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


def _partition(text: str) -> tuple[int, int] | None:
    """`FLEET_DRIFT_PARTITION=k/N`: this instance watches partition k of N (see DriftService)."""
    text = text.strip()
    if not text:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise Invalid(f"FLEET_DRIFT_PARTITION={text!r}: use k/N, e.g. 0/3", field="drift_partition")
    return int(index), int(count)
