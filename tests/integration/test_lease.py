"""Leases on a real nats-server: one holder at a time, takeover after the holder dies or stops,
and the fence (a holder that cannot renew stops counting the lease as its own)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from shared.errors import Unavailable
from shared.lease import LEASE_BUCKET, Lease, holder_of, lease_bucket, run_while_held

TTL = 1.5  # short, so takeovers happen within a test


@pytest.fixture
async def fresh_bucket(nc: NATS) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.BucketNotFoundError):
        await nc.jetstream().delete_key_value(LEASE_BUCKET)


@contextlib.asynccontextmanager
async def running(lease: Lease) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(lease.run())
    try:
        yield task
    finally:
        lease.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_bucket_takes_the_lease_time_from_its_max_age(nc: NATS, fresh_bucket: None) -> None:
    _, ttl = await lease_bucket(nc, ttl=TTL)
    assert ttl == pytest.approx(TTL)
    _, again = await lease_bucket(nc, ttl=30)  # an existing bucket keeps its own lease time
    assert again == pytest.approx(TTL)


async def test_one_holder_and_takeover_after_a_clean_stop(nc: NATS, fresh_bucket: None) -> None:
    kv, ttl = await lease_bucket(nc, ttl=TTL)
    first = Lease(kv, "ticks", "a", ttl=ttl)
    second = Lease(kv, "ticks", "b", ttl=ttl)
    async with running(first) as first_task:
        await asyncio.wait_for(first.gained.wait(), 10)
        async with running(second):
            await asyncio.sleep(0)  # let the second try once: it must not get it
            assert await holder_of(nc, "ticks") == "a"
            assert not second.held
            first.stop()
            await first_task
            assert not first.held
            await asyncio.wait_for(second.gained.wait(), 10)
            assert second.held
            assert await holder_of(nc, "ticks") == "b"


async def test_takeover_after_the_holder_is_cut_off(connect_as: Callable[..., Awaitable[NATS]], nc: NATS,
                                                     fresh_bucket: None) -> None:
    await lease_bucket(nc, ttl=TTL)
    holder_nc = await connect_as("service:drift", "a", max_reconnect_attempts=0)  # a service may take leases
    holder_kv, ttl = await lease_bucket(holder_nc)
    holder = Lease(holder_kv, "drift.0-of-1", "a", ttl=ttl)
    standby = Lease((await lease_bucket(nc))[0], "drift.0-of-1", "b", ttl=ttl)
    async with running(holder):
        await asyncio.wait_for(holder.gained.wait(), 10)
        async with running(standby):
            await holder_nc.close()  # the holder can neither renew nor release: its key expires
            await asyncio.wait_for(holder.lost.wait(), 10)  # the fence: it stops counting on it
            assert not holder.held
            await asyncio.wait_for(standby.gained.wait(), 10)
            assert await holder_of(nc, "drift.0-of-1") == "b"


async def test_a_restarted_slot_reclaims_its_own_lease_at_once(nc: NATS, fresh_bucket: None) -> None:
    """kill -9 leaves the key behind; the same slot's next run takes it back without waiting for
    it to run out, while another name still waits."""
    kv, _ = await lease_bucket(nc, ttl=60.0)  # far longer than the test: only a reclaim can take it
    dead = Lease(kv, "drift", "drift@host/slot", ttl=60.0)
    await dead._attempt()  # taken; then the process "dies": never renewed, never released
    assert dead.held
    other = Lease(kv, "drift", "drift@elsewhere", ttl=60.0)
    await other._attempt()
    assert not other.held
    again = Lease(kv, "drift", "drift@host/slot", ttl=60.0)
    async with running(again):
        await asyncio.wait_for(again.gained.wait(), 2.0)
        assert again.held and await holder_of(nc, "drift") == "drift@host/slot"
        await other._attempt()
        assert not other.held


async def test_a_service_finds_no_bucket_it_may_not_create(connect_as: Callable[..., Awaitable[NATS]],
                                                            fresh_bucket: None) -> None:
    service_nc = await connect_as("service:drift", "a")
    with pytest.raises(Unavailable, match="fleet up"):  # only admin creates buckets; it says who does
        await lease_bucket(service_nc, ttl=TTL)


async def test_fence_follows_the_clock(nc: NATS, fresh_bucket: None) -> None:
    kv, ttl = await lease_bucket(nc, ttl=TTL)
    now = [100.0]
    lease = Lease(kv, "fenced", "a", ttl=ttl, clock=lambda: now[0])
    await lease._attempt()
    assert lease.held
    now[0] += ttl  # no renewal within the lease time: no longer ours, whatever the bucket says
    assert not lease.held


async def test_run_while_held_cancels_the_work_when_the_lease_is_lost(nc: NATS, fresh_bucket: None) -> None:
    kv, ttl = await lease_bucket(nc, ttl=TTL)
    lease = Lease(kv, "work", "a", ttl=ttl)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async with running(lease):
        driver = asyncio.create_task(run_while_held(lease, work))
        await asyncio.wait_for(started.wait(), 10)
        await kv.delete("work")  # someone else's hand: the next renewal fails
        await asyncio.wait_for(cancelled.wait(), 10)
        assert lease.takeovers >= 1
        started.clear()
        await asyncio.wait_for(started.wait(), 10)  # retaken (the key is free again): work restarts
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
