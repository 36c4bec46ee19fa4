"""Wiring of the drift service: connect, ensure the event log and the desired-state bucket,
rebuild the device view from the log, then serve heartbeats until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS

from services.drift.handlers import DriftImage, DriftService, policy_from
from shared.checkpoint import Checkpoints
from shared.cluster import ensure_log
from shared.commands import CommandService
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog
from shared.lease import instance_name, run_while_held
from shared.lease_thread import ThreadLease
from shared.liveness import Vitals, keep_alive, serve_vitals


async def run(settings: Settings) -> None:
    """Run the drift service until cancelled.

    Several instances may run with the same partition (or none): the holder of the partition's
    lease (`drift.<k>-of-<N>`, or `drift`) serves it, the others stand by and take over when it
    dies, rebuilding from the log (docs/decisions.md, "Drift with two or more instances")."""
    nc = await connect_nats(settings, "drift")
    try:
        vitals = await serve_vitals(nc, "drift", settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        partition = _partition(settings.drift_partition)
        lease = ThreadLease(settings, lease_name(partition), instance_name("drift", settings.instance))
        holding = asyncio.create_task(lease.run(), name="drift-lease")
        try:
            # Standing by (the lease another's) is no stall: keep_alive watches the connection
            # and the lease's own loop meanwhile.
            serving = asyncio.create_task(
                run_while_held(lease, lambda: _serve(nc, eventlog, settings, partition, vitals)), name="drift-serve")
            try:
                await keep_alive(nc, [serving, holding])
            finally:
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
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


async def _serve(nc: NATS, eventlog: EventLog, settings: Settings, partition: tuple[int, int] | None,
                 vitals: Vitals) -> None:
    service: DriftService | None = None
    commands: list[CommandService] = []
    try:
        checkpoints = Checkpoints(nc, eventlog, "drift", DriftImage, name=checkpoint_name(partition),
                                  every=settings.checkpoint_every)
        service = DriftService(nc, eventlog, policy_from(settings), partition=partition,
                               checkpoints=checkpoints, vitals=vitals)
        await service.start()
        commands = service.command_services()
        for command_service in commands:
            await command_service.start()
        await keep_alive(nc, service.loops)
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
