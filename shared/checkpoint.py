"""Checkpoints of a service's in-memory state (issue 15.5): a restart loads the newest one and
replays only the log's tail after it, instead of the whole history of its families.

A checkpoint is one object in the service's own JetStream object store bucket
(`fleet_ckpt_<service>`, created by `fleet up`; only that service and admin may write it): the
service's state encoded with msgspec (MessagePack), with the log sequence it covers and what
proves it belongs to this log. It is trusted only when every proof holds; otherwise it is ignored
(a warning says why) and the service replays from zero, as it did before checkpoints:

- the object's SHA-256 digest matches its content (checked as it is read) and it decodes;
- its schema fingerprint matches this code's state type (a field added, removed or retyped in
  any struct the state holds changes it; `version` is bumped by hand for a change of meaning);
- it comes from this very stream (the stream's creation time), and the event at its sequence
  is still the one it was taken after (SHA-256 of that event's subject and body).

Taking one costs the service's event loop a pause: the state is encoded in one go on the loop
(0.48-0.80 s for a million devices, measured by benchmarks/restart.py), then written in the
background; a write that fails is logged and tried again `every` events later. The caller decides
*when* the state is a consistent cut of the log (each service's `image`, handed to `run`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.object_store import ObjectStore

from shared.errors import Unavailable
from shared.eventlog import EventLog
from shared.jetstream import ensure, state_images
from shared.subjects import CHECKPOINTED, checkpoint_bucket

log = logging.getLogger(__name__)

T = TypeVar("T")
FETCH_TIMEOUT = 30.0  # seconds to read a checkpoint before giving up on it (150 MB: under 1 s)


class _Stored(msgspec.Struct, frozen=True):
    """What one checkpoint object holds."""

    service: str
    schema: str
    stream_created: str
    through_seq: int
    through_digest: str
    state: msgspec.Raw


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Decoding a checkpoint makes millions of objects that all stay: a garbage collection every
    few thousand of them would walk every object made so far, again and again (at a million
    devices, freezing what was decoded took the rollout service's restart from 9.7 to 6.0 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # and they are long-lived: later collections need not walk them either
        if enabled:
            gc.enable()


def schema_of(state_type: type[object], version: int) -> str:
    """A fingerprint of the state's shape (its JSON schema) and its meaning (`version`)."""
    shape = msgspec.json.encode(msgspec.json.schema(state_type))
    return f"{version}:{hashlib.sha256(shape).hexdigest()[:16]}"


async def ensure_buckets(nc: NATS, replicas: int = 1) -> list[str]:
    """Create the checkpoint buckets that are missing, where this identity may: admin (`fleet up`,
    `fleet init`), or anyone on a server without authorization; check the others (StreamMisconfigured
    for a weaker one). Returns the buckets it could neither find nor
    create: without its bucket a service replays from zero, as `Checkpoints.open` says."""

    async def missing(service: str) -> str | None:
        try:
            await ensure(nc, state_images(service), replicas)
        except Unavailable as exc:
            log.debug("checkpoint bucket of %s unavailable: %r", service, exc)
            return checkpoint_bucket(service)
        return None

    # At once: a refused request is only known by its timeout, which should not add up per bucket.
    found = await asyncio.gather(*(missing(service) for service in CHECKPOINTED))
    return [bucket for bucket in found if bucket is not None]


class Checkpoints(Generic[T]):
    """Load and write checkpoints of one service's state of type `state_type` (a msgspec type)."""

    def __init__(self, nc: NATS, eventlog: EventLog, service: str, state_type: type[T], *,
                 every: int, name: str | None = None, version: int = 1,
                 may_write: Callable[[], bool] = lambda: True, interval: float = 1.0) -> None:
        """`every`: followed events between two checkpoints (FLEET_CHECKPOINT_EVERY; 0: none);
        `name`: the object (one per drift partition); `may_write`: whether this instance is the
        one that writes (the holder of the service's lease), so two never write at once;
        `interval`: seconds between two looks at whether a checkpoint is due (`run`)."""
        self.nc = nc
        self.log = eventlog
        self.service = service
        self.name = name or service
        self.every = every
        self.may_write = may_write
        self.interval = interval
        self.schema = schema_of(state_type, version)
        self.through_seq = 0  # of the newest checkpoint taken or loaded (0: none)
        self.loaded_through = 0  # of the checkpoint this process started from (0: none)
        self.written = 0  # checkpoints written by this process
        self.last_bytes = 0
        self.last_encode_seconds = 0.0
        self.fetch_seconds = 0.0  # reading the newest checkpoint's bytes (load)
        self._decoder = msgspec.msgpack.Decoder(state_type)
        self._store: ObjectStore | None = None
        self._writing: asyncio.Task[None] | None = None
        self._stream_created = ""

    async def open(self) -> bool:
        """Find the bucket (created here when missing and this identity may: a server without
        authorization); False, with a warning, when there is none: checkpoints are off."""
        if self.every <= 0:
            return False
        try:
            await ensure(self.nc, state_images(self.service))  # checked; created where this identity may
            self._store = await self.nc.jetstream(timeout=5.0).object_store(checkpoint_bucket(self.service))
            self._stream_created = await self.log.created()
        except (Unavailable, nats.js.errors.NotFoundError, nats.errors.TimeoutError) as exc:
            log.warning("%s: no checkpoints (bucket %s unavailable: %r); every start replays the log",
                        self.service, checkpoint_bucket(self.service), exc)
            self._store = None
        return self._store is not None

    async def load(self) -> tuple[T, int] | None:
        """The newest checkpoint's state and the log sequence it covers, or None when there is
        none or it does not match this log (the reason is logged)."""
        if self._store is None:
            return None
        started = time.perf_counter()
        found = await self._read()
        if isinstance(found, str):
            log.warning("%s: checkpoint ignored, replaying from zero: %s", self.service, found)
            return None
        if found is None:
            return None
        state, seq, size = found
        self.through_seq = self.loaded_through = seq
        log.info("%s: checkpoint through %d loaded (%d bytes) in %.2f s (read in %.2f s)", self.service,
                 seq, size, time.perf_counter() - started, self.fetch_seconds)
        return state, seq

    async def _read(self) -> tuple[T, int, int] | str | None:
        """(state, sequence, size), or why the checkpoint cannot be trusted, or None (none)."""
        assert self._store is not None
        try:
            started = time.perf_counter()
            data = await self._fetch()
            self.fetch_seconds = time.perf_counter() - started
        except nats.js.errors.ObjectNotFoundError:
            return None
        except (nats.js.errors.Error, nats.errors.Error, ValueError, TimeoutError) as exc:
            return f"unreadable ({exc!r})"
        if data is None:
            return "its content does not match its SHA-256 digest"
        try:
            stored = msgspec.msgpack.decode(data, type=_Stored)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"corrupt ({exc})"
        reason = await self._mismatch(stored)
        if reason:
            return reason
        try:
            with _collector_paused():
                return self._decoder.decode(stored.state), stored.through_seq, len(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"state does not decode ({exc})"

    async def resume(self, restore: Callable[[T], None]) -> int:
        """Open the bucket and hand the newest valid checkpoint to `restore`; returns the log
        sequence to replay from (1 without a checkpoint)."""
        if not await self.open():
            return 1
        loaded = await self.load()
        if loaded is None:
            return 1
        with _collector_paused():
            restore(loaded[0])
        return loaded[1] + 1

    async def _fetch(self) -> bytes | None:
        """The object's bytes (None when they do not match its digest). nats-py's `get` hands
        each chunk to a thread and reads at ~60 MB/s; an ordered consumer whose callback only
        keeps the chunks reads the same object about seven times faster."""
        assert self._store is not None
        info = await self._store.get_info(self.name)
        chunks: list[bytes] = []
        done = asyncio.Event()

        async def keep(msg: Msg) -> None:
            chunks.append(msg.data)
            if msg.metadata.num_pending == 0:
                done.set()

        if info.chunks:
            sub = await self.nc.jetstream(timeout=5.0).subscribe(
                f"$O.{checkpoint_bucket(self.service)}.C.{info.nuid}", ordered_consumer=True, cb=keep,
                pending_msgs_limit=-1, pending_bytes_limit=-1)
            try:
                await asyncio.wait_for(done.wait(), FETCH_TIMEOUT)
            finally:
                await sub.unsubscribe()
        data = b"".join(chunks)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        return data if info.digest and info.digest.split("=", 1)[-1] == digest else None

    async def _mismatch(self, stored: _Stored) -> str:
        if stored.service != self.service:
            return f"taken by {stored.service!r}, not {self.service!r}"
        if stored.schema != self.schema:
            return f"older schema {stored.schema} (this code: {self.schema})"
        if stored.stream_created != self._stream_created:
            return (f"from another stream (created {stored.stream_created}, this log "
                    f"{self._stream_created})")
        last = await self.log.last_stream_seq()
        if stored.through_seq > last:
            return f"covers sequence {stored.through_seq}, beyond the log's last {last}"
        if await self.log.fingerprint(stored.through_seq) != stored.through_digest:
            return f"the event at sequence {stored.through_seq} is not the one it was taken after"
        return ""

    def due(self, seq: int) -> bool:
        """Whether a checkpoint at `seq` is worth taking now (and none is being written)."""
        return (self._store is not None and seq - self.through_seq >= self.every
                and (self._writing is None or self._writing.done()) and self.may_write())

    def take(self, state: T, seq: int) -> None:
        """Encode `state`, which must hold exactly the log's followed events through `seq`, now;
        write it in the background."""
        if self._store is None:
            return
        started = time.perf_counter()
        body = msgspec.msgpack.encode(state)
        self.last_encode_seconds = time.perf_counter() - started
        self.through_seq = seq
        self._writing = asyncio.create_task(self._write(body, seq), name=f"{self.service}-checkpoint")

    async def _write(self, body: bytes, seq: int) -> None:
        assert self._store is not None
        try:
            digest = await self.log.fingerprint(seq)
            data = msgspec.msgpack.encode(_Stored(self.service, self.schema, self._stream_created, seq,
                                                  digest, msgspec.Raw(body)))
            written = await self._store.put(self.name, data)
            await self._prune(written.nuid)
        except Exception as exc:  # a failed write costs a longer start, never the service
            log.warning("%s: checkpoint through %d not written (next try in %d events): %r",
                        self.service, seq, self.every, exc)
            return
        self.written += 1
        self.last_bytes = len(data)
        log.info("%s: checkpoint through %d written (%d bytes; encoded in %.2f s)", self.service, seq, len(data),
                 self.last_encode_seconds)

    async def _prune(self, keep: str) -> None:
        """Purge chunks no object refers to (left by a writer killed in the middle of a write).
        Only when this object is the bucket's only one: one instance writes it (`may_write`), but
        drift partitions each write an object of their own into the same bucket, and a chunk of a
        write in progress belongs to no object yet (those orphans stay; they are rare)."""
        if await self._names() - {self.name}:
            return
        bucket = checkpoint_bucket(self.service)
        js = self.nc.jetstream(timeout=5.0)
        info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.C.>")
        for subject in info.state.subjects or {}:
            if subject.rsplit(".", 1)[-1] != keep:
                await js.purge_stream(f"OBJ_{bucket}", subject=subject)

    async def _names(self) -> set[str]:
        assert self._store is not None
        try:
            return {entry.name for entry in await self._store.list()}
        except nats.js.errors.NotFoundError:
            return set()

    async def run(self, position: Callable[[], int], state: Callable[[], T | None]) -> None:
        """Forever: every `interval` seconds, take a checkpoint when one is due at `position()`
        (the log sequence through which every followed event is in the state) of `state()`
        (None: not a consistent moment, ask again later). Both are read in one step of the event
        loop, so nothing changes between them."""
        while True:
            await asyncio.sleep(self.interval)
            seq = position()
            if self.due(seq) and (current := state()) is not None:
                self.take(current, seq)

    async def close(self) -> None:
        """Let a write in progress finish."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
