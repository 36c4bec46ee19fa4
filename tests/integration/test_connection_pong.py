"""A flush whose waiter is cancelled before its PONG arrives (nats-io/nats.py#624 family).

On nats-py's stock client the late PONG meets the cancelled future left in `_pongs`:
`InvalidStateError` ends the read loop and nothing more is read on the connection (this is
what left the drift service deaf at 300,000 devices). `shared.connection.Client` counts such a
PONG and keeps reading. The first test pins the upstream behaviour: when it fails, nats-py has
fixed it and the override in `shared.connection` can go (docs/decisions.md)."""

from __future__ import annotations

import asyncio
import os

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from shared.config import Settings
from shared.connection import Client, connect_nats
from shared.embedded import EmbeddedNats


async def _cancel_a_flush_in_flight(nc: NATS) -> None:
    """Start a flush, and cancel it once its PING is out and its future waits in `_pongs`."""
    waiting = asyncio.create_task(nc.flush(timeout=5))
    while not nc._pongs:  # no await between seeing the future and cancelling: the PONG is still to come
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def _answers(nc: NATS) -> bool:
    """Does a round trip through the server still complete on this connection?"""
    sub = await nc.subscribe("probe.pong.echo")
    try:
        await nc.publish("probe.pong.echo", b"x")
        await sub.next_msg(timeout=2)
        return True
    except nats.errors.TimeoutError:
        return False
    finally:
        await sub.unsubscribe()


async def test_stock_nats_py_stops_reading_after_a_cancelled_flush(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url, user_credentials=os.environ["FLEET_NATS_CREDS"])
    try:
        await _cancel_a_flush_in_flight(nc)
        reading = nc._reading_task
        assert reading is not None
        await asyncio.wait_for(asyncio.shield(reading), 5)  # the loop ends on the late PONG
        assert not await _answers(nc)
        assert not nc.is_closed  # and nobody is told: the connection looks alive
    finally:
        await nc.close()


async def test_our_client_keeps_reading_after_a_cancelled_flush(nats_server: EmbeddedNats) -> None:
    nc = await connect_nats(Settings(nats_url=nats_server.url, nats_creds=os.environ["FLEET_NATS_CREDS"]), "pong")
    try:
        assert isinstance(nc, Client)
        for _ in range(3):
            await _cancel_a_flush_in_flight(nc)
        await nc.flush(timeout=5)  # its PONG is matched to its own PING: the cancelled ones were counted
        assert nc._reading_task is not None and not nc._reading_task.done()
        assert await _answers(nc)
        assert not nc._pongs
    finally:
        await nc.close()
