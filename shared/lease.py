"""Leases: work that must have one driver at a time across instances (DESIGN §13).

A lease is a key in the JetStream KV bucket `fleet_leases`, whose `max_age` is the lease time:
a key nobody renews disappears by itself. An instance takes a lease with `kv.create` (succeeds
only when the key is absent) and renews it with `kv.update(key, value, last=revision)` (succeeds
only while the key is still the one it wrote), every third of the lease time. A standby instance
tries `kv.create` at the same pace, so it takes over at most one lease time plus one renew
interval after the holder died; a holder that stops cleanly deletes its key and the standby takes
over at its next try.

Fencing: the holder counts the lease as its own only until `sent + ttl`, where `sent` is when it
sent its last successful renewal (the server stamps the key later than that, so the key cannot
expire before). Work checks `held` before each batch of decisions; a holder cut off from NATS
stops driving before another instance can take over. Appends stay safe even without the fence,
since every append carries the expected last subject sequence.

`run_while_held` runs a piece of work only while this instance holds the lease, cancelling it
when the lease is lost; it is what a projection runner, the rollout ticks, a drift partition or
a periodic checkpoint writer use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from shared import metrics
from shared.aio import wait_set
from shared.auth.roles import LEASES_BUCKET
from shared.errors import Invalid
from shared.jetstream import LEASES, ensure
from shared.transient import NATS_TRANSIENT

log = logging.getLogger(__name__)
LEASE_BUCKET = LEASES_BUCKET
DEFAULT_TTL = 6.0


class LeaseValue(msgspec.Struct, frozen=True):
    """What a lease key holds: who has it, for operators who look at the bucket."""

    holder: str
    name: str


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(LeaseValue)


def instance_name(service: str, slot: str = "") -> str:
    """A name for this process that differs between instances: `service@<slot>` when the process
    runs in a slot of a supervisor (FLEET_INSTANCE: it restarts the process only after it died, so
    one live process at most bears the name), else `service@host:pid`."""
    return f"{service}@{slot}" if slot else f"{service}@{socket.gethostname()}:{os.getpid()}"


async def lease_bucket(nc: NATS, ttl: float = DEFAULT_TTL, replicas: int = 1) -> tuple[KeyValue, float]:
    """The `fleet_leases` bucket (created with `max_age` = `ttl` when absent) and its lease time.

    An existing bucket keeps its own `max_age`: that, not `ttl`, is the lease time returned."""
    if ttl <= 0:
        raise Invalid(f"lease time must be positive, got {ttl}", field="lease_ttl")
    info = await ensure(nc, dataclasses.replace(LEASES, max_age=ttl), replicas)
    return await nc.jetstream().key_value(LEASE_BUCKET), float(info.config.max_age or ttl)


async def holder_of(nc: NATS, name: str, timeout: float = 30.0) -> str | None:
    """Who holds lease `name` now, by the bucket (None when nobody does). Asked again through a
    leader election of the bucket, for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kv = await nc.jetstream(timeout=2.0).key_value(LEASE_BUCKET)
            entry = await kv.get(name)
            break
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError,
                nats.js.errors.BucketNotFoundError):
            return None
        except NATS_TRANSIENT:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    if not entry.value:
        return None
    return _DECODER.decode(entry.value).holder


class Lease:
    """One named lease, taken and renewed in the background by `run()` while it runs."""

    def __init__(self, kv: KeyValue, name: str, holder: str, *, ttl: float,
                 clock: Callable[[], float] = time.monotonic, renew_every: float = 0.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        """`renew_every`: seconds between renewals (0: a third of `ttl`); `on_change(held)` is
        called when the lease is gained or lost (shared.lease_thread mirrors it across threads)."""
        self.kv = kv
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renew_every = renew_every if 0 < renew_every < ttl else ttl / 3
        self.on_change = on_change
        self.clock = clock
        self.revision: int | None = None
        self.valid_until = 0.0
        self.gained = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self.takeovers = 0  # how many times this instance gained the lease
        self._value = _ENCODER.encode(LeaseValue(holder=holder, name=name))
        self._stopping = asyncio.Event()
        metrics.LEASE_HELD.labels(name).set(0)

    @property
    def held(self) -> bool:
        """Is the lease this instance's right now (the fence: check before each batch of work)?"""
        return self.revision is not None and self.clock() < self.valid_until

    async def run(self) -> None:
        """Take or renew the lease every third of its time until `stop()`; then release it."""
        try:
            while not self._stopping.is_set():
                await self._attempt()
                pause = self.renew_every
                if self.held:
                    pause = min(pause, max(0.0, self.valid_until - self.clock()))
                await wait_set(self._stopping, pause)
                if not self.held:
                    self._lose()
        finally:
            await self._release()

    def stop(self) -> None:
        """Ask `run()` to release the lease and return."""
        self._stopping.set()

    async def _attempt(self) -> None:
        sent = self.clock()
        try:
            if self.revision is None:
                revision = await self.kv.create(self.name, self._value)
            else:
                revision = await self.kv.update(self.name, self._value, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            if self.revision is None:
                reclaimed = await self._reclaim()
                if reclaimed is not None:
                    self._held(reclaimed, sent)
                    return
            else:
                log.warning("lease %s: taken by another instance", self.name)
            self.revision = None
            self._lose()
            return
        except NATS_TRANSIENT as exc:  # keep the lease until it runs out; try again next time
            log.debug("lease %s: %r", self.name, exc)
            return
        self._held(revision, sent)

    async def _reclaim(self) -> int | None:
        """The key bears this very holder name: an earlier run of this instance's slot wrote it and
        died without releasing it (names are unique among live processes, see `instance_name`).
        Take it back at once instead of waiting for it to run out; the new revision, or None."""
        try:
            entry = await self.kv.get(self.name)
            if entry.value is None or _DECODER.decode(entry.value).holder != self.holder:
                return None
            revision = await self.kv.update(self.name, self._value, last=entry.revision)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError,
                nats.js.errors.KeyWrongLastSequenceError, msgspec.DecodeError, *NATS_TRANSIENT):
            return None
        log.info("lease %s: reclaimed from an earlier run of %s", self.name, self.holder)
        return int(revision)

    def _held(self, revision: int, sent: float) -> None:
        self.revision = revision
        self.valid_until = sent + self.ttl
        if not self.gained.is_set():
            self.takeovers += 1
            metrics.LEASE_HELD.labels(self.name).set(1)
            metrics.LEASE_TAKEOVERS.labels(self.name).inc()
            log.info("lease %s: held by %s", self.name, self.holder)
            self.lost.clear()
            self.gained.set()
            if self.on_change is not None:
                self.on_change(True)

    def _lose(self) -> None:
        if self.gained.is_set():
            log.warning("lease %s: lost by %s", self.name, self.holder)
            metrics.LEASE_HELD.labels(self.name).set(0)
            if self.on_change is not None:
                self.on_change(False)
        self.gained.clear()
        self.lost.set()

    async def _release(self) -> None:
        revision, self.revision = self.revision, None
        self._lose()
        if revision is None:
            return
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, *NATS_TRANSIENT):
            await self.kv.delete(self.name, last=revision)


class Holding(Protocol):
    """What work run under a lease looks at: a Lease, or a ThreadLease (shared.lease_thread)."""

    gained: asyncio.Event
    lost: asyncio.Event

    @property
    def held(self) -> bool:
        """Is the lease this instance's right now?"""
        ...


async def run_while_held(lease: Holding, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work()` whenever `lease` is held, cancelling it when the lease is lost; forever (until
    cancelled). The lease itself must be running (`lease.run()`) alongside."""
    while True:
        await lease.gained.wait()
        task = asyncio.ensure_future(work())
        lost = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not task.cancelled():
            task.result()  # the work ended by itself (or failed: raise)
            return
