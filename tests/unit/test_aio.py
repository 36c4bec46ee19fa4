"""The 3.12 `asyncio.wait_for` is in place (shared.aio): a task cancelled just as the thing it
waits for completes stops, instead of carrying on (CPython gh-86296 in 3.11's wait_for). The
tests' conftest installs it, as the `fleet` command and the benchmarks package do; importing a
module does not."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from shared.aio import wait_set

_PROBE = """
import asyncio, sys
import shared.eventlog, shared.commands  # importing the library changes nothing
before = asyncio.wait_for.__module__
{entry}
print(before, asyncio.wait_for.__module__)
"""


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="install() is a no-op on 3.12+")
@pytest.mark.parametrize("entry", [
    "import fleet.cli, contextlib\nwith contextlib.suppress(SystemExit):\n    sys.argv = ['fleet', '--help']; fleet.cli.main()",
    "import benchmarks",
])
def test_the_entry_points_install_it_and_importing_does_not(entry: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(entry=entry)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-2:] == ["asyncio.tasks", "shared.aio"]


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
