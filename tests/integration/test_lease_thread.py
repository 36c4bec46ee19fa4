"""Leases survive heavy work (issue #26): a lease renewed in its own thread, loop and connection
(shared.lease_thread) stays held while the part's own loop commits 20,000 events and then stays
busy for three lease times (what folding a 270,000-device wave did); a contender never takes it.
The same work loses a lease renewed on the part's own loop: the failure seen at 100k and 300k."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from shared.config import Settings
from shared.embedded import EmbeddedNats
from shared.eventlog import EventLog, Write
from shared.lease import LEASE_BUCKET, Holding, Lease, lease_bucket
from shared.lease_thread import ThreadLease
from tests.integration.test_eventlog import counted

TTL = 1.5

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
async def settings(nc: NATS, nats_server: EmbeddedNats) -> Settings:
    with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
        await nc.jetstream().delete_key_value(LEASE_BUCKET)
    await lease_bucket(nc, ttl=TTL)
    return Settings(nats_url=nats_server.url, nats_creds=os.environ["FLEET_NATS_CREDS"], lease_ttl=TTL)


@contextlib.asynccontextmanager
async def running(lease: ThreadLease | Lease) -> AsyncIterator[None]:
    task = asyncio.create_task(lease.run())
    try:
        yield
    finally:
        lease.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def heavy_work(eventlog: EventLog) -> None:
    """A big commit on the part's connection, then its loop busy for three lease times."""
    writes = [Write(f"fleet.evt.counter.heavy-{n}", [counted(f"heavy-{n}", 1)], None) for n in range(20_000)]
    await eventlog.append_batch(writes)
    busy_until = time.monotonic() + 3 * TTL
    while time.monotonic() < busy_until:  # CPU-bound, no await: as a large fold is
        sum(range(1000))


async def held_through(lease: Holding, eventlog: EventLog, contender: ThreadLease) -> bool:
    await asyncio.wait_for(lease.gained.wait(), 30)
    async with running(contender):
        await heavy_work(eventlog)
        await asyncio.sleep(TTL)  # the contender's next tries see the lease renewed, or take it
        return lease.held and not lease.lost.is_set() and contender.takeovers == 0


async def test_a_lease_in_its_own_thread_is_kept_through_heavy_work(settings: Settings, eventlog: EventLog) -> None:
    holder = ThreadLease(settings, "heavy", "holder")
    contender = ThreadLease(settings, "heavy", "contender")
    async with running(holder):
        assert await held_through(holder, eventlog, contender)
        assert holder.takeovers == 1


async def test_a_lease_renewed_on_the_busy_loop_is_lost(settings: Settings, eventlog: EventLog, nc: NATS) -> None:
    kv, ttl = await lease_bucket(nc, ttl=TTL)
    holder = Lease(kv, "heavy-in-loop", "holder", ttl=ttl)
    contender = ThreadLease(settings, "heavy-in-loop", "contender")
    async with running(holder):
        assert not await held_through(holder, eventlog, contender)
