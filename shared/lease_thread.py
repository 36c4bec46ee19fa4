"""A lease renewed where nothing the part does can starve it: its own thread, event loop and NATS
connection (issue #26).

At 100,000 and 300,000 devices every lease watched was lost at every large commit: the rollout
committing a 270,000-device wave keeps its event loop busy for seconds at a time (deciding,
sealing, folding what landed) and fills its connection's outgoing buffer, so a renewal due every
2 s for a 6 s lease was sent late or queued behind megabytes of batch frames. A `ThreadLease`
runs the same `Lease` (shared/lease.py: same key, same fencing) on a loop of its own in a daemon
thread with a connection of its own; the part's loop only reads `held` (two numbers) and waits on
`gained`/`lost`, which the thread mirrors into it. A thread needs only the GIL, which a busy loop
hands over every few milliseconds.

It has the shape work run under a lease expects (`shared.lease.Holding`): `run()`, `stop()`,
`held`, `gained`, `lost`, `takeovers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from shared.cluster import replicas_for
from shared.config import Settings
from shared.connection import connect_nats
from shared.lease import Lease, lease_bucket

log = logging.getLogger(__name__)


class ThreadLease:
    """One named lease, taken and renewed in a thread of its own while `run()` runs."""

    def __init__(self, settings: Settings, name: str, holder: str) -> None:
        self.settings = settings
        self.name = name
        self.holder = holder
        self.gained = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self._lease: Lease | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's
        self._stop_asked = False

    @property
    def held(self) -> bool:
        """Is the lease this instance's right now (the fence: check before each batch of work)?"""
        lease = self._lease
        return lease is not None and lease.held

    @property
    def takeovers(self) -> int:
        """How many times this instance gained the lease."""
        return 0 if self._lease is None else self._lease.takeovers

    @property
    def ttl(self) -> float:
        """The lease time (the bucket's)."""
        return self.settings.lease_ttl if self._lease is None else self._lease.ttl

    async def run(self) -> None:
        """Take and renew the lease in the thread until `stop()` or cancellation (then it is
        released and the thread ends); raises what ended the thread otherwise (its connection
        could not be made, ...)."""
        main = asyncio.get_running_loop()
        ended: asyncio.Future[None] = main.create_future()

        def mirror(held: bool) -> None:
            main.call_soon_threadsafe(self._mirror, held)

        def finish(failure: BaseException | None) -> None:
            if not ended.done():
                if failure is None:
                    ended.set_result(None)
                else:
                    ended.set_exception(failure)

        def target() -> None:
            failure: BaseException | None = None
            try:
                asyncio.run(self._serve(mirror))
            except BaseException as exc:  # handed to the part's loop, which decides
                failure = exc
            with contextlib.suppress(RuntimeError):  # the part's loop already closed
                main.call_soon_threadsafe(finish, failure)

        # a daemon: a part that exits without stopping it is not held up by it
        threading.Thread(target=target, name=f"lease-{self.name}", daemon=True).start()
        try:
            await asyncio.shield(ended)
        finally:
            if not ended.done():  # cancelled: release the lease before going
                self.stop()
                await asyncio.wait([ended], timeout=10)

    def _mirror(self, held: bool) -> None:
        if held:
            self.lost.clear()
            self.gained.set()
        else:
            self.gained.clear()
            self.lost.set()

    def stop(self) -> None:
        """Ask the thread to release the lease and end."""
        self._stop_asked = True
        lease, loop = self._lease, self._loop
        if lease is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(lease.stop)

    async def _serve(self, mirror: Callable[[bool], None]) -> None:
        nc = await connect_nats(self.settings, f"lease-{self.name}")
        try:
            kv, ttl = await lease_bucket(nc, self.settings.lease_ttl, replicas_for(self.settings, nc))
            lease = Lease(kv, self.name, self.holder, ttl=ttl, renew_every=self.settings.lease_renew,
                          on_change=mirror)
            self._loop = asyncio.get_running_loop()
            self._lease = lease
            if self._stop_asked:
                lease.stop()
            await lease.run()
        finally:
            await nc.close()
