"""The checkpoint writer's I/O: resume from the log's newest checkpoint, announce the signing key,
follow the log hashing every message, append a signed checkpoint every N events and at shutdown.

Exactly one call site decides whether this instance may write: `_may_write`, which asks the
`may_write` hook (the HA lease once one exists; always yes without it). An instance that may not
write follows the chain and takes in the writer's checkpoints, ready to take over. Two writers cannot
corrupt anything anyway: checkpoint n lives on its own subject `fleet.evt.audit.<n>` and is
appended with expected subject sequence 0, so the server refuses a second checkpoint n and the
loser adopts the winner's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
from nacl.signing import SigningKey

from services.audit.domain import Chain, announcement
from shared import metrics
from shared.audit.chain import AUDIT_SUBJECT_PREFIX, checkpoint_message, key_id, signature_valid, unb64
from shared.envelope import decode_envelope, decode_event, seal
from shared.errors import Conflict, FleetError, Invalid
from shared.eventlog import Appended, EventLog
from shared.events.audit import AuditCheckpointed, AuditKeyAnnounced
from shared.times import utcnow

log = logging.getLogger(__name__)

ACTOR = "service:audit"
MAX_SQUATTED = 1000  # checkpoint numbers skipped in a row before the writer gives up (and says so)



async def _always() -> bool:
    return True


class CheckpointWriter:
    """The one writer of checkpoints over one event log."""

    def __init__(self, eventlog: EventLog, key: SigningKey, *, every: int,
                 previous_key: Callable[[str], SigningKey | None] = lambda _kid: None,
                 may_write: Callable[[], Awaitable[bool]] = _always,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if every < 1:
            raise Invalid(f"FLEET_AUDIT_EVERY must be at least 1, not {every}", field="audit_every")
        self.log = eventlog
        self.key = key
        self.key_id = key_id(bytes(key.verify_key))
        self.every = every
        self.previous_key = previous_key
        self.may_write = may_write
        self.clock = clock
        self.chain = Chain()
        self.written = 0  # checkpoints this instance appended
        self.squatted = 0  # checkpoint numbers it found taken by something else and skipped
        self._writing: asyncio.Task[Appended | None] | None = None  # at most one append in flight
        self._turn = asyncio.Lock()  # the follower's and the timer's checkpoints, one at a time
        self._announced = False  # is our key in the log?
        self._last_key: str | None = None  # the newest key announced before ours
        self._next_try = 0  # after a refused write: hashed sequence at which to ask again

    async def resume(self) -> None:
        """Take up the chain at the log's newest checkpoint and make sure our key is announced."""
        last = await self.log.last_stream_seq()
        keys: list[AuditKeyAnnounced] = []
        newest: AuditCheckpointed | None = None
        async for record in self.log.replay(1, last, subjects=f"{AUDIT_SUBJECT_PREFIX}>"):
            event = record.event
            if isinstance(event, AuditKeyAnnounced):
                keys.append(event)
            elif isinstance(event, AuditCheckpointed) and (newest is None or event.number > newest.number):
                newest = event
        if newest is not None:
            self.chain.adopt(newest)
        self._announced = any(k.key_id == self.key_id for k in keys)
        self._last_key = keys[-1].key_id if keys else None
        if await self._may_write():
            await self._announce()

    async def _announce(self) -> None:
        """Put our key in the log (once), endorsed by the previous key when we hold it."""
        if self._announced:
            return
        previous = self.previous_key(self._last_key) if self._last_key else None
        event = announcement(self.key, previous)
        with contextlib.suppress(Conflict):  # announced meanwhile by an instance with the same key
            await self.log.append(event.subject, [seal(event, actor=ACTOR, at=self.clock())], 0)
        self._announced = True

    async def follow(self) -> None:
        """Hash the log as it grows, checkpointing every `every` events, until cancelled."""
        try:
            async for seq, subject, body in self.log.replay_raw(self.chain.seq + 1, follow=True):
                self._advance(seq, subject, body)
                if self.chain.due(self.every):
                    await self._write_behind()
        finally:
            await self._written()

    async def catch_up(self) -> None:
        """Hash everything appended so far (a bounded read to the log's current end),
        checkpointing every `every` events as `follow` does."""
        last = await self.log.last_stream_seq()
        if last > self.chain.seq:
            try:
                async for seq, subject, body in self.log.replay_raw(self.chain.seq + 1, last):
                    self._advance(seq, subject, body)
                    if self.chain.due(self.every):
                        await self._write_behind()
            finally:
                await self._written()

    async def finish(self) -> Appended | None:
        """At shutdown: catch up and checkpoint what is not covered yet (unless only our own
        checkpoints are, so restarts do not add checkpoints of checkpoints)."""
        await self.catch_up()
        return await self.write() if self.chain.news else None

    def _advance(self, seq: int, subject: str, body: bytes) -> None:
        """Hash one message; an audit event written by another instance (the lease holder, when
        this one stands by) is taken in, so a standby's chain stays trimmed and numbered."""
        if seq <= self.chain.seq:
            return
        self.chain.advance(seq, subject, body)
        if not subject.startswith(AUDIT_SUBJECT_PREFIX):
            return
        try:
            event = decode_event(decode_envelope(body))
        except (FleetError, msgspec.MsgspecError):
            log.error("audit message at seq %d is not an audit event", seq)
            return
        if isinstance(event, AuditKeyAnnounced):
            self._last_key = event.key_id
            self._announced = self._announced or event.key_id == self.key_id
        elif isinstance(event, AuditCheckpointed) and not self.chain.adopt(event):
            log.error("checkpoint %d at seq %d signs another chain value for seq %d than this writer "
                      "computed: the log differs from what its checkpoints signed (run fleet audit verify)",
                      event.number, seq, event.through_seq)

    async def _write_behind(self) -> None:
        """Make the due checkpoint now (through the sequence just hashed) and append it while
        hashing goes on (an fsynced append costs milliseconds); the previous one is awaited
        first, so at most one is in flight and checkpoints stay `every` events apart."""
        if self.chain.seq < self._next_try:
            return  # standing by: ask the lease again only every `every` messages
        async with self._turn:
            await self._written()
            if self.chain.due(self.every):
                self._writing = asyncio.create_task(self._append(self.chain.checkpoint(self.key)),
                                                    name="audit-checkpoint")

    async def tick(self) -> Appended | None:
        """The timer's duty (every FLEET_AUDIT_MAX_DELAY): checkpoint what the follower has hashed
        if any event other than our own checkpoints is uncovered, so a quiet log is not left
        unsigned until the next N events or the next shutdown."""
        async with self._turn:
            await self._written()
            return await self._append(self.chain.checkpoint(self.key)) if self.chain.news else None

    async def _written(self) -> None:
        """Wait for the checkpoint in flight, if any (its failure is raised here)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def write(self) -> Appended | None:
        """Append the next checkpoint through the last hashed sequence, if we may write."""
        async with self._turn:
            await self._written()
            return await self._append(self.chain.checkpoint(self.key))

    async def _append(self, event: AuditCheckpointed) -> Appended | None:
        if not await self._may_write():
            self._next_try = self.chain.seq + self.every
            return None
        await self._announce()  # a writer that could not write at start announces before signing
        for _ in range(MAX_SQUATTED):
            try:
                appended = await self.log.append(event.subject, [seal(event, actor=ACTOR, at=self.clock())], 0)
                break
            except Conflict:
                if await self._adopt_written(event.subject):
                    return None
            # Someone holding an audit identity put something else on checkpoint n (a squatter:
            # the writer used to retry n for ever, silently). Move on to the next free number.
            self.squatted += 1
            metrics.AUDIT_SQUATTED.inc()
            log.error("checkpoint number %d is taken by a message that is no checkpoint of this "
                      "writer (squatted?): writing it as number %d", event.number, event.number + 1)
            self.chain.skip(event.number)
            event = self.chain.checkpoint(self.key)
        else:
            raise FleetError(f"{MAX_SQUATTED} checkpoint numbers in a row are squatted, up to {event.number}")
        self.chain.adopt(event)
        self.written += 1
        log.info("checkpoint %d through seq %d at seq %d", event.number, event.through_seq, appended[0].seq)
        return appended[0]

    async def _may_write(self) -> bool:
        """The one place that decides whether this instance writes to the log (lease hook)."""
        return await self.may_write()

    async def _adopt_written(self, subject: str) -> bool:
        """Someone else wrote checkpoint n first: take theirs if it agrees with our chain. False
        when what is there is no checkpoint signed with our key (the number was squatted)."""
        try:
            recorded, _ = await self.log.load(subject)
        except Invalid:  # not even an event envelope
            return False
        genuine = False
        for record in recorded:
            event = record.event
            if not (isinstance(event, AuditCheckpointed) and self._signed_by_us(event)):
                continue
            genuine = True
            if not self.chain.adopt(event):
                raise FleetError(f"checkpoint {event.number} in the log (seq {record.seq}) signs another "
                                 f"chain value for seq {event.through_seq} than this writer computed")
        return genuine

    def _signed_by_us(self, event: AuditCheckpointed) -> bool:
        if event.key_id != self.key_id:
            return False
        try:
            message = checkpoint_message(event.number, event.from_seq, event.through_seq,
                                         bytes.fromhex(event.chain), unb64(event.digests))
            return signature_valid(bytes(self.key.verify_key), message, unb64(event.signature))
        except ValueError:
            return False
