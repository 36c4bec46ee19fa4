"""asyncio helpers, and on Python 3.11 the 3.12 `asyncio.wait_for`.

Python 3.11's `wait_for` can swallow a cancellation that arrives just as the awaited thing
completes (CPython gh-86296, fixed in 3.12 by building `wait_for` on `asyncio.timeout`). A task
told to stop then carries on; in a loop it runs forever (seen here: the simulator's heartbeat
loop and the rollout service's follower each hung a test once in a few dozen runs, through
nats-py's own `wait_for` calls in `flush` and `request`). `install()` puts the 3.12 version in
place for every caller, nats-py included. Importing a module changes nothing: the entry points
call it — the `fleet` command (and so every part `fleet up` runs), the tests' conftest and the
benchmarks package."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def _wait_for(fut: Awaitable[T], timeout: float | None) -> T:
    """`asyncio.wait_for` as Python 3.12 has it."""
    if timeout is not None and timeout <= 0:
        task = asyncio.ensure_future(fut)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait([task])
        try:
            return task.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut


def install() -> None:
    """Use the 3.12 `wait_for` on Python 3.11 (a no-op on 3.12 and later)."""
    if sys.version_info < (3, 12):
        asyncio.wait_for = _wait_for  # type: ignore[assignment]  # replacing the stdlib function on purpose
        asyncio.tasks.wait_for = _wait_for  # type: ignore[assignment]  # (same)


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


__all__ = ["install", "wait_set"]
