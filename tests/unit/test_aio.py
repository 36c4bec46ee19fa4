"""The 3.12 `asyncio.wait_for` is in place (shared.aio): a task cancelled just as the thing it
waits for completes stops, instead of carrying on (CPython gh-86296 in 3.11's wait_for)."""

from __future__ import annotations

import asyncio

import pytest

import shared  # noqa: F401 - importing shared installs it
from shared.aio import wait_set


async def test_a_cancellation_racing_completion_is_not_swallowed() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(200):
        fut = loop.create_future()

        async def waiter(fut: asyncio.Future[int] = fut) -> int:
            return await asyncio.wait_for(fut, 10)

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        fut.set_result(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_wait_for_times_out_and_zero_timeout_cancels() -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(5), 0)
    assert await asyncio.wait_for(asyncio.sleep(0, "done"), 1) == "done"


async def test_wait_set() -> None:
    event = asyncio.Event()
    assert not await wait_set(event, 0.01)
    event.set()
    assert await wait_set(event, 0.01)
