"""`fleet service audit`: the checkpoint writer (DESIGN §8, docs/audit.md). Connects as `audit`,
loads or creates the signing key under `<data-dir>/secrets/`, resumes from the log's newest
checkpoint, follows the log and checkpoints every `FLEET_AUDIT_EVERY` events, after
`FLEET_AUDIT_MAX_DELAY` on a quiet log, and at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

from services.audit.handlers import CheckpointWriter
from shared.audit.keys import load_or_create, retired_key
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog
from shared.lease import instance_name
from shared.lease_thread import ThreadLease
from shared.liveness import keep_alive, serve_vitals


async def run(settings: Settings) -> None:
    """Write checkpoints until cancelled, then one last one."""
    nc = await connect_nats(settings, "audit")
    try:
        await serve_vitals(nc, "audit", settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        # One writer at a time across instances (DESIGN §13): the holder of the `audit` lease. (Two
        # would be safe anyway: the log refuses a second checkpoint with the same number.)
        lease = ThreadLease(settings, "audit", instance_name("audit", settings.instance))
        holding = asyncio.create_task(lease.run(), name="audit-lease")

        async def may_write() -> bool:
            return lease.held

        writer = CheckpointWriter(eventlog, load_or_create(settings.data_path), every=settings.audit_every,
                                  previous_key=functools.partial(retired_key, settings.data_path),
                                  may_write=may_write)
        await writer.resume()
        following = asyncio.create_task(writer.follow(), name="audit-follow")
        timer = asyncio.create_task(_every(settings.audit_max_delay, writer.tick), name="audit-timer")
        try:
            await keep_alive(nc, [following, timer, holding])
        finally:
            for task in (timer, following):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await writer.finish()
            lease.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


async def _every(seconds: float, duty: Callable[[], Awaitable[object]]) -> None:
    """Run `duty` every `seconds` (the service's clock edge; tests call the duty directly)."""
    while True:
        await asyncio.sleep(seconds)
        await duty()
