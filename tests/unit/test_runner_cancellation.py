"""A projection runner ends when cancelled, even when what it awaited turns the cancellation into
a connection error (asyncpg does, for an operation cut short), instead of retrying forever; such
a runner kept `fleet up`'s projections process from ever exiting after PostgreSQL died."""

from __future__ import annotations

import asyncio
from typing import cast

import asyncpg

from projections.changes.store import ChangesProjection
from projections.runner import Runner
from shared.eventlog import EventLog
from shared.transient import PG_TRANSIENT


class _CutShort(Runner):
    """A runner whose start-up waits until cancelled, then fails as asyncpg does."""

    def __init__(self) -> None:  # no pool or log: never touched
        super().__init__(cast(asyncpg.Pool, None), cast(EventLog, None), ChangesProjection(), retry_wait=0.01)
        self.started = asyncio.Event()
        self.cut = False

    async def _ensure_built(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.cut:  # once only: a runner that retried is then cancelled for good by the teardown
                raise
            self.cut = True
            raise asyncpg.InterfaceError("cannot call Connection.fetchrow(): connection has been released") from None


async def test_a_cancelled_runner_ends_even_if_the_cancellation_surfaces_as_a_connection_error() -> None:
    runner = _CutShort()
    task = asyncio.create_task(runner.run())
    await runner.started.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=2)  # (not wait_for: it would wait for a task that never ends)
    assert task.cancelled()


def test_a_connection_lost_mid_operation_is_retried() -> None:
    # asyncpg reports an operation whose connection died under it as an InternalClientError
    assert issubclass(asyncpg.exceptions.InternalClientError, PG_TRANSIENT)
