"""Two instances of one service on one log (DESIGN §13): commands alternate between them, every
one succeeds on the state the other wrote (optimistic concurrency, reload on conflict), and with
`follow_peers` each instance's reads show the other's writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from services.registry.handlers import Registry
from shared.commands import Context
from shared.contract.registry import AddDevice, AddSite, RelabelDevice
from shared.eventlog import EventLog
from shared.ids import new_command_id
from shared.peers import follow_peers
from shared.times import utcnow


@contextlib.asynccontextmanager
async def instance(eventlog: EventLog, follow: bool = True) -> AsyncIterator[Registry]:
    registry = Registry(eventlog)
    await registry.rebuild()
    task = asyncio.create_task(follow_peers(eventlog, [registry.sites, registry.devices], 1)) if follow else None
    try:
        yield registry
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def ctx() -> Context:
    return Context(now=utcnow())


async def settled(a: Registry, b: Registry, log: EventLog) -> None:
    head = await log.last_stream_seq()
    for _ in range(200):
        if all(max(r.sites.applied_through, r.devices.applied_through) >= head for r in (a, b)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the instances did not catch up with the log")


async def test_alternating_commands_on_two_instances(eventlog: EventLog) -> None:
    async with instance(eventlog) as a, instance(eventlog) as b:
        await a.on_site_command(AddSite(command_id=new_command_id(), actor="operator:t", site_id="s1"), ctx())
        await b.on_device_command(AddDevice(command_id=new_command_id(), actor="operator:t", device_id="d1",
                                            site_id="s1"), ctx())  # b has not seen the site yet: it reloads
        for n in range(20):  # each relabel decided on the other instance's last write
            writer = a if n % 2 else b
            await writer.on_device_command(RelabelDevice(command_id=new_command_id(), actor="operator:t",
                                                         device_id="d1", labels={"n": str(n)}), ctx())
        await settled(a, b, eventlog)
        assert a.device("d1") == b.device("d1")
        assert a.device("d1").labels == {"n": "19"}
        relabels = [r async for r in eventlog.replay() if r.envelope.type == "DeviceRelabeled"]
        assert len(relabels) == 20  # none lost, none doubled


async def test_without_following_an_instance_reads_stale_state(eventlog: EventLog) -> None:
    """What follow_peers is for (and that the check above can fail)."""
    async with instance(eventlog, follow=False) as a, instance(eventlog, follow=False) as b:
        await a.on_site_command(AddSite(command_id=new_command_id(), actor="operator:t", site_id="s2"), ctx())
        assert b.site("s2").status == "absent"


@pytest.mark.parametrize("repeat", [1])
async def test_a_command_repeated_on_the_other_instance_is_not_applied_twice(eventlog: EventLog,
                                                                              repeat: int) -> None:
    async with instance(eventlog) as a, instance(eventlog) as b:
        await a.on_site_command(AddSite(command_id=new_command_id(), actor="operator:t", site_id="s3"), ctx())
        await settled(a, b, eventlog)
        command = RelabelDevice(command_id=new_command_id(), actor="operator:t", device_id="d3", labels={"x": "1"})
        await a.on_device_command(AddDevice(command_id=new_command_id(), actor="operator:t", device_id="d3",
                                            site_id="s3"), ctx())
        await a.on_device_command(command, ctx())
        await settled(a, b, eventlog)
        for _ in range(repeat):  # a client resending after a failover reaches the other instance
            await b.on_device_command(command, ctx())
        relabels = [r async for r in eventlog.replay() if r.envelope.type == "DeviceRelabeled"]
        assert len(relabels) == 1
