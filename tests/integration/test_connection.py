"""`shared.connection.settled`: after it, the server has processed what the connection sent. A
subscription made and settled gets a message published (and settled) right after, every time.
(With nats-py's `flush()` alone, ~3-7% of such messages were lost: its PING overtakes the SUB.)"""

from __future__ import annotations

import os

import nats
import nats.errors
from nats.aio.client import Client as NATS

from shared.connection import settled
from shared.embedded import EmbeddedNats


async def test_a_settled_subscription_gets_what_is_published_right_after(nc: NATS, nats_server: EmbeddedNats) -> None:
    other = await nats.connect(nats_server.url, user_credentials=os.environ["FLEET_NATS_CREDS"])
    lost = []
    try:
        for n in range(1000):
            sub = await nc.subscribe(f"probe.settled.{n}")
            await settled(nc)
            await other.publish(f"probe.settled.{n}", b"x")
            await settled(other)
            try:
                await sub.next_msg(0.5)
            except nats.errors.TimeoutError:
                lost.append(n)
            await sub.unsubscribe()
    finally:
        await other.close()
    assert lost == []
