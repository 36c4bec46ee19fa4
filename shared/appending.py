"""The one way services append to the log: atomic batches through a `Pipeline`.

Every writer of several batches at once (the registry's import, the rollout's commit, drift's
writer) sends atomic batches (`EventLog.append_batch`: all or nothing, each write with its
expected subject sequence) and needs the same things around them, written once here:

- a window: up to `window` batches at the server at once (a batch's round trip, not the CPU,
  bounds a large write), a batch that depends on one in flight (`after`) waiting until that
  one landed, and `drain()` waiting for all (before a write whose expected sequence depends on
  everything sent so far);
- settlement in the order sent: what landed is handed to `landed` (the fold-back into memory)
  and recorded in `stored`; the newest landed sequence of every subject is kept (`last`), for
  the expected sequence of a later write;
- a refused batch (`Conflict`: a stale expected sequence, someone else wrote) is handed to
  `refused`, the writer's resync, which may raise to fail the whole send;
- on any failure, every batch already sent is still waited for and what landed still folded
  in before the first error is raised, so nothing is left running unobserved and memory never
  misses what the log holds.

What to write and what a refusal means stay with each writer: its decisions. A single batch
with nothing else in flight (an aggregate store's command, drift's operator commands) needs none
of this: it is `EventLog.append` itself (a `Pipeline` of one cost single commands ~6%, measured).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from shared.errors import Conflict
from shared.eventlog import Appended, EventLog, Write

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[list[Appended]]
    tag: T


class Pipeline(Generic[T]):
    """Atomic batches to the log, at most `window` in flight, settled in the order sent; use as
    `async with Pipeline(log, ...) as pipeline: await pipeline.send(writes, tag)`. The `tag` is
    the writer's own record of a batch (its events, its devices), handed back with the outcome."""

    def __init__(self, log: EventLog, *, window: int = 1,
                 landed: Callable[[T, list[Appended]], None] | None = None,
                 refused: Callable[[T, Conflict], Awaitable[None]] | None = None) -> None:
        self.log = log
        self.window = window
        self._landed = landed
        self._refused = refused
        self._flights: deque[_Flight[T]] = deque()
        self.stored: list[tuple[T, list[Appended]]] = []  # every batch that landed, in the order settled
        self.last: dict[str, int] = {}  # subject -> the newest sequence landed on it

    async def send(self, writes: Sequence[Write], tag: T, *, after: Callable[[T], bool] | None = None) -> None:
        """Send one atomic batch once there is room in the window and no batch in flight is one
        it comes `after`."""
        while self._flights and (len(self._flights) >= self.window
                                 or (after is not None and any(after(f.tag) for f in self._flights))):
            await self._settle_oldest()
        self._flights.append(_Flight(asyncio.create_task(self.log.append_batch(writes)), tag))
        await asyncio.sleep(0)  # let the batch go out before the writer prepares the next

    @property
    def in_flight(self) -> int:
        """How many batches are at the server now."""
        return len(self._flights)

    async def drain(self) -> None:
        """Wait until every batch sent has settled; raise the first failure (after the rest)."""
        try:
            while self._flights:
                await self._settle_oldest()
        except BaseException:
            await self._settle_rest()
            raise

    async def _settle_rest(self) -> None:
        while self._flights:
            try:
                await self._settle_oldest()
            except Exception:  # the first failure is the one raised
                continue

    async def _settle_oldest(self) -> None:
        flight = self._flights.popleft()
        try:
            stored = await flight.task
        except Conflict as exc:
            if self._refused is None:
                raise
            await self._refused(flight.tag, exc)
            return
        for where in stored:
            if where.seq > self.last.get(where.subject, 0):
                self.last[where.subject] = where.seq
        self.stored.append((flight.tag, stored))
        if self._landed is not None:
            self._landed(flight.tag, stored)

    async def __aenter__(self) -> Pipeline[T]:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            await self.drain()
        else:  # failing: still settle what was sent (what landed is folded in), then let `exc` go on
            await self._settle_rest()
