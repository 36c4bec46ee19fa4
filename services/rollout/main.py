"""`fleet service rollout`: connect, ensure the log, rebuild, serve until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from services.rollout.handlers import RolloutImage, RolloutService
from shared.checkpoint import Checkpoints
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.eventlog import EventLog
from shared.lease import instance_name
from shared.lease_thread import ThreadLease
from shared.liveness import keep_alive, serve_vitals

TICKS_LEASE = "rollout-ticks"


async def run(settings: Settings) -> None:
    """Run the rollout service until cancelled."""
    nc = await connect_nats(settings, "rollout")
    try:
        vitals = await serve_vitals(nc, "rollout", settings)
        log = EventLog(nc)
        await ensure_log(nc, settings, log)
        # renewed in a thread of its own: a large wave's commit cannot starve it (shared.lease_thread)
        lease = ThreadLease(settings, TICKS_LEASE, instance_name("rollout", settings.instance))
        checkpoints = Checkpoints(nc, log, "rollout", RolloutImage, every=settings.checkpoint_every)
        service = RolloutService(nc, log, lease=lease, checkpoints=checkpoints, vitals=vitals,
                                 tick_bound=settings.duty_bound, round_seconds=settings.heartbeat_interval)
        await service.start()
        holding = asyncio.create_task(lease.run(), name="rollout-lease")
        try:
            await keep_alive(nc, [*service.loops, holding])
        finally:
            await service.stop()
            lease.stop()  # released: a standby takes over at its next try
            with contextlib.suppress(asyncio.CancelledError):
                await holding
    finally:
        await nc.close()
