"""`fleet service projections`: keep every read model up to date with the event log."""

from __future__ import annotations

import asyncio
import logging

from projections.changes.store import ChangesProjection
from projections.fleet.store import FleetProjection
from projections.pointintime import SNAPSHOT_EVERY, snapshot_hook
from projections.runner import Projection, Runner, create_pool
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog

log = logging.getLogger(__name__)


def all_projections() -> list[Projection]:
    """Every projection, by name order."""
    return [ChangesProjection(), FleetProjection(snapshot_every=SNAPSHOT_EVERY)]


def runner_for(pool: object, eventlog: EventLog, projection: Projection) -> Runner:
    """A runner with the projection's hooks (the fleet projection keeps point-in-time copies)."""
    hook = snapshot_hook(pool=pool) if projection.name == "fleet" else None  # type: ignore[arg-type]
    return Runner(pool, eventlog, projection, after_batch=hook)  # type: ignore[arg-type]


async def run(settings: Settings) -> None:
    """Run every projection until cancelled (a poison event is recorded and skipped, never stops one)."""
    if not settings.database_url:
        raise Invalid("no database: set FLEET_DATABASE_URL or run `fleet up`", field="database_url")
    nc = await connect_nats(settings, "projections")
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        eventlog = EventLog(nc)
        await eventlog.ensure_stream()
        runners = [runner_for(pool, eventlog, p) for p in all_projections()]
        await asyncio.gather(*(r.run() for r in runners))
    finally:
        await pool.close()
        await nc.close()
