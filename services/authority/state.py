"""The revocation state shared by every instance of the authority part, kept in NATS: the KV
bucket `fleet_identity`, key `state`, written only with the revision it was read at (DESIGN §13:
expected-revision writes), so two instances on different hosts never write from stale copies.

The local file (`secrets/revocations.json`, shared.auth.authority) stays the working copy the
`Authority` decides on; this module keeps it equal to the key: it reads the key at start (or puts
the file's state there when the key is new), re-reads it whenever the key's subject carries a
change (a core subscription, as an agent follows its desired state), and makes every change as
read, change, write-if-unchanged, again on conflict. Reading merges rather than replaces
(`Authority.adopt_state`): nothing a copy knew (a revocation, a key generation from a CLI
enrolment beside the part) is lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from shared.auth.authority import Authority
from shared.auth.roles import IDENTITY_BUCKET
from shared.errors import Conflict, Unavailable
from shared.jetstream import IDENTITY, ensure

log = logging.getLogger(__name__)
BUCKET = IDENTITY_BUCKET
KEY = "state"
ATTEMPTS = 20  # writes lost to another instance before a change gives up (Conflict)
T = TypeVar("T")


class SharedState:
    """The authority's state mirrored from (and written to) the `fleet_identity` key."""

    def __init__(self, nc: NATS, authority: Authority) -> None:
        self.nc = nc
        self.authority = authority
        self.kv: KeyValue | None = None
        self.revision = 0
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Read the key (creating it from the local state when new) and follow its changes."""
        try:
            await ensure(self.nc, IDENTITY)  # checked as every store is: never changed, refused if weaker
            self.kv = await self.nc.jetstream(timeout=5.0).key_value(BUCKET)
        except (nats.js.errors.BucketNotFoundError, nats.errors.TimeoutError):
            raise Unavailable(f"the {BUCKET} bucket does not exist (or this identity may not see it); "
                              "`fleet up` or `fleet init` (admin) creates it") from None
        for _ in range(100):  # until the key is ours or read: two instances start at once
            if await self.pull():
                break
            try:
                self.revision = await self.kv.create(KEY, self.authority.encoded_state())
                break
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                # another instance was first (nats-py's create then reads the key back, and a
                # direct get from a replica that has not got it yet says "not found"): read it
                await asyncio.sleep(0.1)
        else:
            raise Unavailable(f"the {KEY} key of {BUCKET} could neither be created nor read")
        await self.change(lambda: None)  # what this copy knew that the key did not (a CLI enrolment)

        async def changed(_: object) -> None:
            await self.pull()

        self._sub = await self.nc.subscribe(f"$KV.{BUCKET}.{KEY}", cb=changed)

    async def stop(self) -> None:
        """Stop following the key."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def pull(self) -> bool:
        """Take the key's state if it is newer than ours; False when the key does not exist."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(KEY)
        except nats.js.errors.KeyNotFoundError:
            return False
        revision = entry.revision or 0
        if revision > self.revision and entry.value:
            self.authority.adopt_state(entry.value)
            self.revision = revision
        return True

    async def change(self, mutate: Callable[[], T]) -> T:
        """Apply `mutate` (an Authority method) to the current state and write it back only if
        nobody wrote meanwhile; on a conflict read again and apply it again."""
        assert self.kv is not None
        async with self._lock:
            for _ in range(ATTEMPTS):
                await self.pull()
                result = mutate()
                try:
                    self.revision = await self.kv.update(KEY, self.authority.encoded_state(), last=self.revision)
                    return result
                except nats.js.errors.KeyWrongLastSequenceError:
                    log.info("revocation state changed by another instance meanwhile; applying again")
            raise Conflict(f"the revocation state changed {ATTEMPTS} times while this change was made")
