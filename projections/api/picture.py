"""How fresh drift's picture of the devices is (issue #26, "the views never lie").

Online/offline, drifted, degraded: every answer built from them is only as true as drift's
hearing. The API asks drift's instances for their duties (`$SRV.DUTIES.drift`, shared.liveness)
every few seconds in the background and keeps the answer: the picture is as of the oldest moment
an instance last heard what it expected, and stale once that is older than the bound (or drift
has not answered since). Answers carry it as `device_state`; the dashboard shows "device state
stale since T" instead of a frozen "all online"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS

from shared.liveness import PartReport, gather_reports
from shared.times import format_time, parse_time

log = logging.getLogger(__name__)
HEARING = "heartbeats"  # drift's duty (services/drift/handlers.py)


class DeviceStateFreshness(msgspec.Struct, frozen=True, kw_only=True):
    """How fresh drift's picture of the devices is."""

    as_of: str | None  # when drift last heard what it expected (RFC 3339); None: not yet known
    stale: bool
    stale_since: str | None = None
    reason: str | None = None


def judge_picture(reports: list[PartReport], *, now: float, bound: float,
                  last_as_of: float | None, watching_since: float) -> tuple[float | None, DeviceStateFreshness]:
    """(the new as-of, the freshness) from drift's answers (pure): the oldest hearing among the
    instances that serve devices; stale when older than `bound`, or a hearing stalled, or no
    instance has answered for `bound` (as of then `last_as_of`)."""
    hearing = [duty for report in reports for duty in report.duties if duty.name == HEARING]
    as_of = min((parse_time(d.last, "last").timestamp() for d in hearing), default=None) if hearing else last_as_of
    stalled = [d for d in hearing if d.stalled_since is not None]
    if stalled:
        since = min(stalled, key=lambda d: d.stalled_since or "").stalled_since
        return as_of, DeviceStateFreshness(as_of=_iso(as_of), stale=True, stale_since=since,
                                           reason="drift has not heard heartbeats it expects")
    reference = as_of if as_of is not None else watching_since
    if now - reference > bound:
        reason = ("drift has not reported" if hearing else
                  "drift is starting (rebuilding its picture)" if reports else "drift is not answering")
        return as_of, DeviceStateFreshness(as_of=_iso(as_of), stale=True, stale_since=_iso(reference), reason=reason)
    return as_of, DeviceStateFreshness(as_of=_iso(as_of), stale=False)


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else format_time(datetime.fromtimestamp(seconds, UTC))


class PictureWatch:
    """Keeps `freshness` up to date by asking drift every `every` seconds."""

    def __init__(self, nc: NATS, *, heartbeat_interval: float = 10.0, every: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.nc = nc
        self.every = every
        self.bound = max(2 * heartbeat_interval, 5.0) + every  # drift's own bound, plus one ask
        self.clock = clock
        self._since = clock()
        self._as_of: float | None = None
        self.freshness = DeviceStateFreshness(as_of=None, stale=False)
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> DeviceStateFreshness:
        """Ask drift now and update `freshness`."""
        try:
            reports = await gather_reports(self.nc, "drift", wait=0.3)
        except Exception as exc:  # our own link down: judged as no answer
            log.debug("asking drift for its duties: %r", exc)
            reports = []
        self._as_of, self.freshness = judge_picture(reports, now=self.clock(), bound=self.bound,
                                                    last_as_of=self._as_of, watching_since=self._since)
        return self.freshness

    def start(self) -> None:
        """Check every `every` seconds in the background."""

        async def loop() -> None:
            while True:
                await self.check()
                await asyncio.sleep(self.every)

        self._task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
