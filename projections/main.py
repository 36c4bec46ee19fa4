"""`fleet service projections`: keep every read model up to date with the event log."""

from __future__ import annotations

import asyncio
import logging

from projections.changes.store import ChangesProjection
from projections.fleet.store import FleetProjection
from projections.pointintime import SNAPSHOT_EVERY, snapshot_hook
from projections.runner import Projection, Runner, create_pool
from shared.cluster import ensure_log
from shared.config import Settings
from shared.connection import connect_nats
from shared.errors import Invalid
from shared.eventlog import EventLog
from shared.lease import instance_name, run_while_held
from shared.lease_thread import ThreadLease
from shared.liveness import Duty, keep_alive, serve_vitals

log = logging.getLogger(__name__)
POOL_CLOSE_TIMEOUT = 5.0  # seconds the pool may take to close gracefully before it is cut


def all_projections() -> list[Projection]:
    """Every projection, by name order."""
    return [ChangesProjection(), FleetProjection(snapshot_every=SNAPSHOT_EVERY)]


def runner_for(pool: object, eventlog: EventLog, projection: Projection) -> Runner:
    """A runner with the projection's hooks (the fleet projection keeps point-in-time copies)."""
    hook = snapshot_hook(pool=pool) if projection.name == "fleet" else None
    return Runner(pool, eventlog, projection, after_batch=hook)


async def _watch_progress(eventlog: EventLog, watched: list[tuple[Runner, ThreadLease, Duty]],
                          every: float = 5.0) -> None:
    """Each projection's `progress` duty: its lag to the log is falling, or nil, or it is being
    rebuilt, or another instance holds its lease."""
    before = {runner.name: runner.checkpoint for runner, _, _ in watched}
    while True:
        await asyncio.sleep(every)
        try:
            head = await eventlog.last_stream_seq()
        except Exception:  # the log away: nothing to judge by; the connection's own watch decides
            continue
        for runner, lease, duty in watched:
            lag = max(0, head - runner.checkpoint)
            if not lease.held or runner.rebuilding or lag == 0 or runner.checkpoint > before[runner.name]:
                duty.done(detail=f"lag {lag}" if lease.held else "standing by")
            before[runner.name] = runner.checkpoint


async def run(settings: Settings) -> None:
    """Run every projection until cancelled (a poison event is recorded and skipped, never stops one)."""
    if not settings.database_url:
        raise Invalid("no database: set FLEET_DATABASE_URL or run `fleet up`", field="database_url")
    nc = await connect_nats(settings, "projections")
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        vitals = await serve_vitals(nc, "projections", settings)
        eventlog = EventLog(nc)
        await ensure_log(nc, settings, eventlog)
        # Each projection has one runner at a time across instances (DESIGN §13): the holder of
        # its lease. (A second runner would be harmless, only wasted work: a batch commits only
        # if the checkpoint is still the one it started from.)
        runners = [runner_for(pool, eventlog, p) for p in all_projections()]
        holder = instance_name("projections", settings.instance)
        leases = [ThreadLease(settings, f"projection-{r.name}", holder) for r in runners]
        try:
            # One runner failing for a reason it does not retry ends them all, and the process:
            # its supervisor starts it afresh (a runner left going would hold the pool open).
            async with asyncio.TaskGroup() as group:
                for lease, runner in zip(leases, runners, strict=True):
                    group.create_task(lease.run())
                    group.create_task(run_while_held(lease, runner.run))
                duties = [vitals.duty(f"progress-{r.name}", settings.duty_bound) for r in runners]
                group.create_task(_watch_progress(eventlog, list(zip(runners, leases, duties, strict=True))))
                group.create_task(keep_alive(nc))
        except* Exception as failed:
            for exc in failed.exceptions:
                log.error("projections: stopping on %r", exc, exc_info=exc)
            raise
    finally:
        # Bounded: a connection still busy (its server gone) must not keep a dying process alive.
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()
        await nc.close()
