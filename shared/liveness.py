"""Alive means working: a part's duties, how it reports them, and when it must die.

A running process is not proof of work. Every part (a service, the projection runner, the API)
keeps `Vitals`: named duties it must perform, each with a bound (drift handling heartbeats, the
rollout ticking, the projections keeping up with the log). A duty is *stalled* when it has not been
done within its bound; the part answers `$SRV.DUTIES` and `$SRV.DUTIES.<part>` with a
`PartReport`, on the same connection it works on, so a part whose connection is dead does not
answer either. (`$SRV.>` because every part's identity already publishes and subscribes there for
the NATS micro services API, and the API and `fleet up` may ask there: see docs/decisions.md.)
Who asks: `fleet up` (restarts a part that stalls or stops answering), the API (`/readyz`, and
how fresh drift's picture of the devices is), `python -m fleet.probe --duties` (Kubernetes).

`keep_alive` is what a part's `run` awaits once it serves: it raises `PartStopped` (so the process
exits non-zero and its supervisor starts it afresh) when the NATS connection is closed for good,
its read loop has ended, or one of the part's own loops (a follower, a ticker) has ended. A part
never carries on deaf, retrying forever on a connection that will not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import NoReturn

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.config import Settings
from shared.errors import Unavailable
from shared.lease import instance_name
from shared.times import format_time

log = logging.getLogger(__name__)
DUTIES_SUBJECT = "$SRV.DUTIES"


class DutyReport(msgspec.Struct, frozen=True, kw_only=True):
    """One duty of a part: when it was last done, and since when it has stalled (None: it has not)."""

    name: str
    bound: float  # seconds it may go undone
    last: str  # RFC 3339: the last time it was done (or found nothing to do)
    stalled_since: str | None = None  # = last, once `bound` has passed since
    detail: str = ""


class PartReport(msgspec.Struct, frozen=True, kw_only=True):
    """A part's answer on `$SRV.DUTIES`."""

    part: str
    instance: str  # FLEET_INSTANCE (the supervisor's slot), else host:pid
    at: str
    duties: list[DutyReport] = []

    @property
    def stalled(self) -> list[DutyReport]:
        """The duties that have stalled."""
        return [d for d in self.duties if d.stalled_since is not None]


_REPORT_DECODER = msgspec.json.Decoder(PartReport)
_ENCODER = msgspec.json.Encoder()


class PartStopped(Unavailable):
    """The part cannot work any more (its connection closed for good, one of its loops ended):
    the process exits non-zero so its supervisor starts it afresh."""


def _iso(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(seconds, UTC))


class Duty:
    """One thing a part must keep doing, at least once per `bound` seconds."""

    def __init__(self, name: str, bound: float, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.bound = bound
        self.clock = clock
        self.last = clock()  # the start counts as done: a new part has `bound` to get going
        self.detail = ""

    def done(self, now: float | None = None, detail: str | None = None) -> None:
        """The duty was done now (or there was nothing to do)."""
        self.last = self.clock() if now is None else now
        if detail is not None:
            self.detail = detail

    def stalled_since(self, now: float) -> float | None:
        """When it was last done, if that is more than `bound` ago; None while it is kept."""
        return self.last if now - self.last > self.bound else None

    def report(self) -> DutyReport:
        """This duty as reported now (by its own clock)."""
        since = self.stalled_since(self.clock())
        return DutyReport(name=self.name, bound=self.bound, last=_iso(self.last),
                          stalled_since=None if since is None else _iso(since), detail=self.detail)


class Vitals:
    """The duties of one part, and its answer on `$SRV.DUTIES`."""

    def __init__(self, part: str, instance: str, clock: Callable[[], float] = time.time) -> None:
        self.part = part
        self.instance = instance
        self.clock = clock
        self.duties: dict[str, Duty] = {}

    def duty(self, name: str, bound: float) -> Duty:
        """The duty called `name` (made on first use)."""
        if name not in self.duties:
            self.duties[name] = Duty(name, bound, self.clock)
        return self.duties[name]

    def add(self, duty: Duty) -> None:
        """Report `duty` from now on, as done now (work that begins, e.g. after a rebuild)."""
        duty.done()
        self.duties[duty.name] = duty

    def remove(self, name: str) -> None:
        """Stop reporting a duty (work that ended: a lease lost, a service stopped)."""
        self.duties.pop(name, None)

    def report(self) -> PartReport:
        """Every duty now."""
        now = self.clock()
        return PartReport(part=self.part, instance=self.instance, at=_iso(now),
                          duties=[d.report() for d in self.duties.values()])

    async def serve(self, nc: NATS) -> None:
        """Answer `$SRV.DUTIES` (every part) and `$SRV.DUTIES.<part>` on `nc`."""

        async def answer(msg: Msg) -> None:
            if msg.reply:
                with contextlib.suppress(Exception):  # the asker gone or the link down: it asks again
                    await nc.publish(msg.reply, _ENCODER.encode(self.report()))

        for subject in (DUTIES_SUBJECT, f"{DUTIES_SUBJECT}.{self.part}"):
            await nc.subscribe(subject, cb=answer)


async def serve_vitals(nc: NATS, part: str, settings: Settings) -> Vitals:
    """The vitals of this part, answering on `nc` from now on."""
    vitals = Vitals(part, settings.instance or instance_name(part).split("@", 1)[1])
    await vitals.serve(nc)
    return vitals


async def gather_reports(nc: NATS, part: str | None = None, wait: float = 0.5) -> list[PartReport]:
    """The answers of every running part (or of every instance of one) within `wait` seconds."""
    answers: list[PartReport] = []
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            answers.append(_REPORT_DECODER.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(DUTIES_SUBJECT if part is None else f"{DUTIES_SUBJECT}.{part}", b"", reply=inbox)
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return answers


def broken(nc: NATS) -> str | None:
    """Why `nc` will never carry anything again (closed for good, or connected with its read loop
    ended), or None while it works or may still reconnect."""
    if nc.is_closed:
        return "NATS connection closed for good"
    reading = nc._reading_task  # nats-py keeps no public sign of it; a dead reader is a deaf part
    if nc.is_connected and reading is not None and reading.done():
        return "NATS read loop ended"
    return None


async def keep_alive(nc: NATS, loops: Iterable[asyncio.Task[None]] | Callable[[], Iterable[asyncio.Task[None]]] = (),
                     every: float = 0.5) -> NoReturn:
    """Wait forever, unless `nc` breaks or one of `loops` ends: then raise PartStopped. `loops`
    may be a function giving the loops that run now (a part that replaces one, e.g. drift's
    follower after an outage)."""
    while True:
        watched = list(loops() if callable(loops) else loops)
        reason = broken(nc)
        if reason is not None:
            raise PartStopped(reason)
        for loop in watched:
            if loop.done():
                failure = None if loop.cancelled() else loop.exception()
                raise PartStopped(f"{loop.get_name()} ended ({failure!r})" if failure else f"{loop.get_name()} ended")
        if watched:
            await asyncio.wait(watched, timeout=every)
        else:
            await asyncio.sleep(every)
