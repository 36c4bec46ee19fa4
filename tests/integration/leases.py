"""Which process holds a lease, for tests that run instances as separate processes."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from nats.aio.client import Client as NATS

from shared.lease import holder_of


async def wait_for_holder(nc: NATS, lease: str, among: Collection[str], timeout: float = 20.0) -> str:
    """The holder of `lease` once it is one of `among` (instance names, `shared.lease.instance_name`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    holder = None
    while loop.time() < deadline:
        holder = await holder_of(nc, lease)
        if holder is not None and holder in among:
            return holder
        await asyncio.sleep(0.05)
    raise AssertionError(f"none of {sorted(among)} took {lease} within {timeout:.0f} s (holder: {holder})")
